"""A Stepflow component server built with the real stepflow-py SDK (0.7 or 0.9).

Runs inside `.venv-stepflow-<release>/`, never in the project's venv:

    python sdk_components.py            # stepflow-py 0.7: JSON-RPC on stdin/stdout
    python sdk_components.py            # stepflow-py 0.9: Streamable HTTP; prints {"port": N}

Its components reach blobs only through the SDK's own `context.put_blob` and
`context.get_blob`, so every byte of `blobs/put` and `blobs/get` is the SDK's.
"""

# No `from __future__ import annotations`: the SDK reads the input type from the
# annotation at run time, and a string annotation is one it cannot convert to.
from typing import Any

try:  # stepflow-py 0.9: the worker lives in stepflow_py.worker and serves HTTP
    from stepflow_py.worker import StepflowContext, StepflowServer
    from stepflow_py.worker.generated_protocol import BlobType

    SERVER: Any = StepflowServer()
    RELEASE = "0.9"
except ImportError:  # stepflow-py 0.7: the stdio server at the package's top level
    from stepflow_py import StepflowContext, StepflowStdioServer
    from stepflow_py.generated_protocol import BlobType

    SERVER = StepflowStdioServer()
    RELEASE = "0.7"


@SERVER.component
async def put_blob(input: dict[str, Any], context: StepflowContext) -> dict[str, Any]:
    """Stores input["value"] with the SDK (type input["blob_type"], default data)."""
    blob_type = BlobType(input.get("blob_type", "data"))
    return {"blob_id": await context.put_blob(input["value"], blob_type)}


@SERVER.component
async def get_blob(input: dict[str, Any], context: StepflowContext) -> dict[str, Any]:
    """Fetches input["blob_id"] with the SDK; raises as the SDK does when it fails."""
    return {"value": await context.get_blob(input["blob_id"])}


@SERVER.component
async def round_trip(input: dict[str, Any], context: StepflowContext) -> dict[str, Any]:
    """Puts input["value"], gets it back by the id the put returned, and returns both."""
    blob_type = BlobType(input.get("blob_type", "data"))
    blob_id = await context.put_blob(input["value"], blob_type)
    return {"blob_id": blob_id, "value": await context.get_blob(blob_id)}


def main() -> None:
    if RELEASE == "0.9":
        import asyncio

        asyncio.run(SERVER.run(host="127.0.0.1", port=0))
    else:
        SERVER.run()


if __name__ == "__main__":
    main()
