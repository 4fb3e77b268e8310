"""blobstore: a content-addressed blob store served over gRPC.

The package root holds what clients and servers share (errors, ids, model, canonical
JSON, status mapping, retry policy, the client); `service/` runs the server process,
`grpc/` adapts the gRPC API to the store, `storage/` holds the backends and decorators,
and `api/` the code generated from `proto/`.
"""
