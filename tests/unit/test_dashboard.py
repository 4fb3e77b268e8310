"""docs/grafana-dashboard.json asks only for metrics the server and bridge really export.

Every metric family is registered as the processes register them (the server's,
the file system backend's over a real data folder, the bridge's, the process
collector) in a registry of the test's own; every series name in the dashboard's
queries must be one of theirs, so a renamed metric cannot leave a dead panel."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector

from blobstore.service.admission import AdmissionLimits
from blobstore.service.metrics import ServerMetrics
from blobstore.storage.filesystem import FileSystemBackend
from blobstore.storage.filesystem import metrics as filesystem_metrics
from jsonrpc_bridge.observe import BridgeMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def _exported(tmp_path: Path) -> set[str]:
    registry = CollectorRegistry()
    ServerMetrics.create(registry).admission(AdmissionLimits())  # its gauges come with it
    BridgeMetrics(registry)
    ProcessCollector(registry=registry)
    backend = FileSystemBackend(tmp_path / "data")
    backend.open()
    try:
        filesystem_metrics.watch(backend, registry)
        families = list(registry.collect())
    finally:
        backend.close()
    return {f.name + suffix for f in families for suffix in _SUFFIXES.get(f.type, ("",))}


def test_every_dashboard_query_names_an_exported_series(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = _exported(tmp_path)
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert len(queries) >= 25
    used = {name for q in queries for name in re.findall(r"\b((?:blobstore|process)_\w+)", q)}
    assert used - exported == set()
    # The store, group commit and bridge families of issue 16 each have a panel.
    for name in (
        "blobstore_store_blobs",
        "blobstore_store_bytes",
        "blobstore_group_commit_sync_seconds_bucket",
        "blobstore_journal_segments",
        "blobstore_bridge_jsonrpc_batch_size_sum",
        "blobstore_bridge_http_connections",
        "blobstore_admission_refusals_total",
    ):
        assert name in used, name


def test_panels_do_not_overlap() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, panel["title"]
        cells |= mine
