"""Tests of the JSON-RPC bridge, mostly against real bridge and server processes."""
