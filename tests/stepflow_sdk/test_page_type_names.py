"""Why the bridge answers "data" and not the protocol page's "Json": the real SDKs cannot
decode "Json".

With `--blob-type-names seed-examples` the bridge answers as the page's examples do;
stepflow-py then fails to decode the `blobs/get` reply (0.7 drops it and logs the
error, 0.9 answers the reply's POST with HTTP 400), so the component's `get_blob`
never returns. The default (`stepflow`) is what the other tests in this folder use.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blobstore.client import BlobClient
from tests.bridge_processes import BridgeProcess
from tests.processes import ServerProcess
from tests.rpc_helpers import wait_until
from tests.stepflow_sdk.runtime import HttpRuntime, StandInRuntime, StdioRuntime

SEED_NAMES = ("--blob-type-names", "seed-examples")


@pytest.mark.parametrize("release", ["0.7", "0.9"])
def test_the_sdk_cannot_decode_the_pages_type_names(
    release: str,
    sdk_pythons: dict[str, Path],
    sdk_server: ServerProcess,
    sdk_grpc: BlobClient,
    tmp_path: Path,
) -> None:
    blob_id = sdk_grpc.put_json({"decoded by": "nobody"}).info.blob_id
    bridge: BridgeProcess | None = None
    runtime: StandInRuntime
    if release == "0.7":
        runtime = StdioRuntime(sdk_pythons[release], tmp_path, sdk_server.target, *SEED_NAMES)
    else:
        bridge = BridgeProcess(sdk_server.target, tmp_path / "bridge.log", *SEED_NAMES).start()
        runtime = HttpRuntime(sdk_pythons[release], tmp_path, bridge.url)
    try:
        runtime.start()
        pending = runtime.submit("get_blob", {"blob_id": blob_id})
        if isinstance(runtime, HttpRuntime):
            statuses = runtime.sdk_reply_statuses
            assert wait_until(lambda: 400 in statuses, 60), (statuses, runtime.sdk_log())
        else:
            log = runtime.sdk_log
            assert wait_until(lambda: "Invalid enum value 'Json'" in log(), 60), log()
        # The bridge did answer, in the page's spelling; the SDK could not take it.
        assert any(b'"blob_type":"Json"' in call.reply for call in runtime.forwarded)
        assert not pending.done()
    finally:
        runtime.close()
        if bridge is not None:
            bridge.kill()
