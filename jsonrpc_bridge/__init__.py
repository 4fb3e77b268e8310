"""JSON-RPC 2.0 bridge: component servers call blobs/put and blobs/get over HTTP or stdio.

protocol (JSON-RPC framing, transport-independent) -> methods (blobs/* as calls to
the gRPC BlobService via blobstore.client) ; transports: http_transport, stdio_transport;
the command: cli. Error codes: errors. Settings: config.
"""
