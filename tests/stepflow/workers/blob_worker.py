"""A Stepflow component server built with the real `stepflow-py` SDK, run by its own venv.

Run with .venv-stepflow-07/bin/python (stepflow-py 0.7.0: serves on stdin/stdout) or
.venv-stepflow-09/bin/python (stepflow-py 0.9.2: serves Streamable HTTP on a free port and
prints {"port": N} on stdout). Its components store and fetch blobs only through the SDK's
own StepflowContext.put_blob / get_blob, which send `blobs/put` / `blobs/get` to the
runtime; tests/stepflow/runtime.py plays the runtime and forwards them to our bridge.

Annotations stay real types (no `from __future__ import annotations`): the SDK reads them
to convert a component's input. Not imported by the test suite (the SDK is not installed in
the project's venv), so mypy leaves it out (pyproject.toml); ruff checks it.
"""

import asyncio
import sys
from typing import Any

try:  # stepflow-py 0.9: the worker package, HTTP only
    from stepflow_py.worker import StepflowContext, StepflowServer
    from stepflow_py.worker.generated_protocol import BlobType

    SERVER: Any = StepflowServer()
    HTTP = True
except ImportError:  # stepflow-py 0.7: stdio
    from stepflow_py import StepflowContext, StepflowStdioServer
    from stepflow_py.generated_protocol import BlobType

    SERVER = StepflowStdioServer()
    HTTP = False

GET_TIMEOUT = 10.0
"""How long a component waits for get_blob unless its input says ("timeout"): an SDK that
drops an undecodable reply would wait forever (what the bridge's default names avoid)."""


async def _raised(call: Any, input: dict) -> dict[str, Any]:
    """What awaiting `call` gave: {"value": ...} or {"raised": class, "message": text}."""
    try:
        value = await asyncio.wait_for(call, input.get("timeout", GET_TIMEOUT))
        # "summary": only the length of a (long) string value, so the component's own answer
        # stays small: stepflow-py 0.7 writes answers to a non-blocking stdout and cuts long ones.
        return {"length": len(value)} if input.get("summary") else {"value": value}
    except Exception as exc:  # the test asserts on what the SDK raised
        return {"raised": type(exc).__name__, "message": str(exc)}


@SERVER.component
async def put_get(input: dict, context: StepflowContext) -> dict:
    """Puts input["value"] as input["blob_type"] ("data" or "flow"), then gets it back."""
    blob_id = await context.put_blob(input["value"], BlobType(input.get("blob_type", "data")))
    return {"blob_id": blob_id, **await _raised(context.get_blob(blob_id), input)}


@SERVER.component
async def put_only(input: dict, context: StepflowContext) -> dict:
    """Puts each of input["values"] in turn; returns their ids."""
    return {"blob_ids": [await context.put_blob(value) for value in input["values"]]}


@SERVER.component
async def get(input: dict, context: StepflowContext) -> dict:
    """Gets input["blob_id"]: the value, or what the SDK raised."""
    return await _raised(context.get_blob(input["blob_id"]), input)


@SERVER.component
async def many(input: dict, context: StepflowContext) -> dict:
    """Puts every value of input["values"] at once, then gets every id back at once."""
    values = input["values"]
    ids = await asyncio.gather(*(context.put_blob(value) for value in values))
    got = await asyncio.gather(*(context.get_blob(blob_id) for blob_id in ids))
    return {"blob_ids": list(ids), "values": list(got)}


def main() -> None:
    if HTTP:
        asyncio.run(SERVER.run(host="127.0.0.1", port=0))
    else:
        SERVER.run()


if __name__ == "__main__":
    sys.exit(main())
