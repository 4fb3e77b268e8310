"""Runs stepflow-py 0.13's own blob calls against STEPFLOW_BLOB_URL; run by the Stepflow venv.

Not a test module: tests/stepflow/test_stepflow_grpc.py runs it with the
Stepflow venv's Python. It reads a JSON list of calls on stdin, makes each
with the SDK's module-level worker API (`blob_store.put_blob`, `get_blob`,
`put_blob_binary`, `get_blob_binary`) or its gRPC task context
(`GrpcContext.put_blob` / `get_blob`), and prints one JSON line per call:
{"result": ...} (bytes as {"base64": ...}) or {"error": {"code", "details"}}.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from typing import Any

import grpc
from stepflow_py.worker import blob_store
from stepflow_py.worker.grpc_context import GrpcContext


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"base64"}:
        return base64.b64decode(value["base64"])
    return value


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    return value


async def _call(context: GrpcContext, call: dict[str, Any]) -> Any:
    op, arg = call["op"], _decode(call.get("arg"))
    if op == "put_blob":
        return await blob_store.put_blob(arg, call.get("blob_type", "data"))
    if op == "get_blob":
        return await blob_store.get_blob(arg)
    if op == "put_blob_binary":
        return await blob_store.put_blob_binary(arg, filename=call.get("filename"))
    if op == "get_blob_binary":
        return await blob_store.get_blob_binary(arg)
    if op == "context_put_blob":
        return await context.put_blob(arg, call.get("blob_type", "data"))
    if op == "context_get_blob":
        return await context.get_blob(arg)
    raise ValueError(f"unknown op {op!r}")


async def main() -> None:
    context = GrpcContext(orchestrator_tracker=None, blob_url=os.environ["STEPFLOW_BLOB_URL"])
    for call in json.load(sys.stdin):
        try:
            line = {"result": _encode(await _call(context, call))}
        except grpc.aio.AioRpcError as exc:
            line = {"error": {"code": exc.code().name, "details": exc.details()}}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
