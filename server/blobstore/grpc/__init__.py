"""The gRPC adapter: the BlobService servicer and the interceptor that gates every call."""
