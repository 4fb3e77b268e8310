"""Stores a flow in a running stepflow-server and runs it; run by the Stepflow venv.

Not a test module: tests/stepflow/test_stepflow_orchestrator.py runs it with
the Stepflow venv's Python as `flow_driver.py HOST:PORT` and reads one JSON
line on stdout: {"flow_id", "status", "result"} of the run.
"""

from __future__ import annotations

import asyncio
import json
import sys

from google.protobuf import json_format
from stepflow_py import StepflowClient
from stepflow_py.worker.flow_builder import FlowBuilder
from stepflow_py.worker.value import Value

UNKNOWN = "0" * 64
MALFORMED = "not-a-blob-id"


def build_flow() -> dict[str, object]:
    flow = FlowBuilder(name="blobs-through-our-store")
    flow.add_step(
        id="json", component="/python/store_json", input_data={"value": Value.input.add_path("doc")}
    )
    flow.add_step(
        id="read", component="/python/read_ref", input_data={"value": Value.step("json", "ref")}
    )
    flow.add_step(id="mib", component="/python/store_binary", input_data={"size": 1024 * 1024})
    flow.add_step(id="empty", component="/python/store_binary", input_data={"size": 0})
    flow.add_step(
        id="context",
        component="/python/context_roundtrip",
        input_data={"value": Value.input.add_path("doc")},
    )
    flow.add_step(
        id="errors",
        component="/python/errors",
        input_data={"ids": [UNKNOWN, UNKNOWN.upper().replace("0", "F"), MALFORMED]},
    )
    for step in ("json", "read", "mib", "empty", "context", "errors"):
        flow.add_output_field(step, Value.step(step))
    import msgspec

    return msgspec.to_builtins(flow.build())  # type: ignore[no-any-return]


async def main(target: str) -> None:
    doc = json.loads(sys.stdin.read())
    async with StepflowClient.connect(target) as client:
        stored = await client.store_flow(build_flow())
        run = await client.run(stored.flow_id, {"doc": doc}, wait_timeout=120, timeout=180)
    print(
        json.dumps(
            {"flow_id": stored.flow_id, "run": json_format.MessageToDict(run)}, sort_keys=True
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
