"""A Stepflow Python worker whose components store and read blobs; run by stepflow-server.

Not a test module: tests/stepflow/test_stepflow_orchestrator.py has the real
`stepflow-server` start it (a `grpc` plugin with a `command`), with
STEPFLOW_BLOB_URL pointing at our server. It registers its components on the
SDK's own worker (`stepflow_py.worker.main`) and runs that worker's main(), so
everything between the orchestrator and the components is the SDK's code.
Each component returns the ids it got, so the test can read them back through
our other APIs.
"""

# The SDK is untyped here (its venv is not ours): its decorator leaves functions untyped.
# mypy: disable-error-code="untyped-decorator"

from __future__ import annotations

import hashlib
from typing import Any

import grpc
from stepflow_py.worker import blob_store
from stepflow_py.worker.context import StepflowContext
from stepflow_py.worker.main import main, server

MiB = 1024 * 1024


def pattern(size: int) -> bytes:
    """`size` bytes that are not all alike (so a misplaced chunk would show)."""
    block = hashlib.sha256(b"stepflow").digest() * (64 * 1024 // 32)
    return (block * (size // len(block) + 1))[:size]


@server.component(name="store_json")
async def store_json(input: dict[str, Any]) -> dict[str, Any]:
    """Stores the value, reads it back, and passes it on as a `$blob` reference."""
    blob_id = await blob_store.put_blob(input["value"])
    read_back = await blob_store.get_blob(blob_id)
    return {
        "id": blob_id,
        "read_back_equal": read_back == input["value"],
        "ref": {"$blob": blob_id, "blobType": "data", "size": len(str(input["value"]))},
    }


@server.component(name="read_ref")
async def read_ref(input: dict[str, Any]) -> dict[str, Any]:
    """Gets the `$blob` reference already resolved by the SDK (through GetBlob)."""
    return {"resolved": input["value"]}


@server.component(name="store_binary")
async def store_binary(input: dict[str, Any]) -> dict[str, Any]:
    """Stores `size` bytes of the pattern with put_blob_binary and reads them back."""
    data = pattern(int(input["size"]))
    blob_id = await blob_store.put_blob_binary(data)
    read_back = await blob_store.get_blob_binary(blob_id)
    return {"id": blob_id, "size": len(read_back), "read_back_equal": read_back == data}


@server.component(name="context_roundtrip")
async def context_roundtrip(input: dict[str, Any], context: StepflowContext) -> dict[str, Any]:
    """The task context's put_blob/get_blob, as a component using its context calls them.

    Stores a value of its own (steps run concurrently: the same value stored as data by
    another step would make the type depend on which came first).
    """
    flow = {"flow_of": input["value"]}
    blob_id = await context.put_blob(flow, "flow")
    read_back = await context.get_blob(blob_id)
    return {"id": blob_id, "read_back_equal": read_back == flow}


@server.component(name="errors")
async def errors(input: dict[str, Any]) -> dict[str, Any]:
    """What get_blob raises for each id given: the gRPC status code's name."""
    codes = {}
    for blob_id in input["ids"]:
        try:
            await blob_store.get_blob(blob_id)
            codes[blob_id] = "OK"
        except grpc.aio.AioRpcError as exc:
            codes[blob_id] = exc.code().name
    return {"codes": codes}


if __name__ == "__main__":
    main()
