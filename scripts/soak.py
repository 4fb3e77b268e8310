"""Soak: a mixed workload against a real server and bridge for a set time, then a report.

Many concurrent clients - gRPC (asyncio client, retries off so every failure
counts) and JSON-RPC over HTTP through the bridge - put and read small and
large blobs, Json and Binary, and check every byte they read back against its
id. Meanwhile the server's and the bridge's resident memory is sampled. The
report gives the operations, every error, latency percentiles per operation
and memory over time, and says whether memory stayed flat: after a warm-up
(the first quarter of the run) the median RSS of the last third may exceed that
of the first third by at most --rss-slack-mib.

    python scripts/soak.py --duration 600                 # its own server and bridge
    python scripts/soak.py --target 127.0.0.1:50051 --server-pid PID --no-bridge
    python scripts/soak.py --duration 20 --json           # what the test suite runs
    python scripts/soak.py --duration 600 --hostile       # with attackers (soak_hostile.py)

With --hostile, the first --quiet-fraction of the run is normal traffic alone (its
p99 latencies are the quiet values); then attackers (scripts/soak_hostile.py: slow
connections, amplifying JSON, bursts past the cap, idle streams) run next to it. The
run then passes if: every acknowledged put still reads back at the end, the attackers
saw no forbidden outcome (CANCELLED in a burst, a Traceback-worthy error...), each
normal operation's p99 stays under 10x its quiet value, and the server's peak RSS stays
under its byte budget (--max-inflight-bytes, 512 MiB) plus HOSTILE_RSS_CONSTANT_MIB.
Normal clients then retry OVERLOADED (the bursts fill the server's call cap on purpose).

Why one script of ~570 lines: the workload, the byte-exact checks and the report
share one run's state; the attackers live in soak_hostile.py.

Exit status: 0 if there were no errors and memory was flat, 1 otherwise.
Loopback only; loops are bounded by --duration.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import contextvars
import hashlib
import itertools
import json
import logging
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import soak_hostile  # noqa: E402

from blobstore.canonical_json import canonicalize_value  # noqa: E402
from blobstore.client import AsyncBlobClient  # noqa: E402
from blobstore.errors import BlobStoreError  # noqa: E402
from blobstore.retry import RetryPolicy  # noqa: E402

MiB = 1024 * 1024
BUDGET_MIB = 512
"""The server's default --max-inflight-bytes."""
HOSTILE_RSS_CONSTANT_MIB = 384
"""What the server holds outside its byte budget under attack: the interpreter and gRPC
(about 60 MiB idle), gRPC's transport buffers of hundreds of connections, message copies
of 30 MiB texts being refused, and the allocator's retained memory."""
P99_FACTOR = 10
_GRPC_LINE = re.compile(r"blobstore gRPC listening on (\S+):(\d+)")
_BRIDGE_LINE = re.compile(r"JSON-RPC listening on (http://\S+/)")


# -- processes --------------------------------------------------------------------


class Child:
    """A server or bridge process this script started; its output goes to a log file."""

    def __init__(self, argv: list[str], log: Path, ready: re.Pattern[str]) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = ready.search(log.read_text(errors="replace"))
            if match:
                self.match = match
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv[2]} exited:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"{argv[2]} did not start:\n{log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def own_stack(
    folder: Path, bridge: bool, hostile: bool = False
) -> Iterator[tuple[str, int, str | None, int | None]]:
    """Starts a server (and a bridge) on free loopback ports; yields their addresses and pids."""
    python = sys.executable
    data = str(folder / "data")
    # Under attack, short timeouts, so that slow and idle connections are seen to end.
    server_extra = ["--handshake-timeout-seconds", "5", "--stream-idle-seconds", "5"]
    bridge_extra = ["--idle-timeout-seconds", "5", "--body-timeout-seconds", "5"]
    server = Child(
        [python, "-m", "blobstore.cli", "serve", "--address", "127.0.0.1:0", "--data-dir", data]
        + (server_extra if hostile else []),
        folder / "server.log",
        _GRPC_LINE,
    )
    target = f"127.0.0.1:{server.match.group(2)}"
    front: Child | None = None
    try:
        if bridge:
            front = Child(
                [
                    python,
                    "-m",
                    "jsonrpc_bridge.cli",
                    "--grpc-target",
                    target,
                    "--http",
                    "127.0.0.1:0",
                    *(bridge_extra if hostile else []),
                ],
                folder / "bridge.log",
                _BRIDGE_LINE,
            )
        yield (
            target,
            server.proc.pid,
            front.match.group(1) if front else None,
            front.proc.pid if front else None,
        )
    finally:
        if front is not None:
            front.stop()
        server.stop()


# -- the workload -----------------------------------------------------------------


@dataclass
class Stats:
    """What the clients did and what went wrong."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: list[str] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)
    """Client retries by operation and cause (see RetryCounter)."""
    parts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """Latencies of the calls inside an operation (the probe's FindMissing and Stat)."""

    async def timed(self, name: str, operation: Awaitable[None]) -> None:
        started = time.perf_counter()
        token = _CURRENT.set((self, name))
        try:
            await operation
        except (BlobStoreError, AssertionError, aiohttp.ClientError, OSError) as exc:
            self.errors[name] += 1
            if len(self.examples) < 20:
                self.examples.append(f"{name}: {type(exc).__name__}: {exc}")
            return
        finally:
            _CURRENT.reset(token)
        self.latencies[name].append(time.perf_counter() - started)

    @staticmethod
    async def part(name: str, call: Awaitable[_T]) -> _T:
        """Awaits one call of the running operation, recording its own latency."""
        started = time.perf_counter()
        try:
            return await call
        finally:
            current = _CURRENT.get()
            if current is not None:
                current[0].parts[f"{current[1]}: {name}"].append(time.perf_counter() - started)


_CURRENT: contextvars.ContextVar[tuple[Stats, str] | None] = contextvars.ContextVar(
    "soak_operation", default=None
)
_T = TypeVar("_T")
_LIMIT = re.compile(r"\(--[a-z-]+\)")


class RetryCounter(logging.Handler):
    """Counts the client's retries (blobstore.retry logs each) by operation and cause.

    The cause is the status code and, for OVERLOADED, the limit the server named, so a
    latency tail made of backoff pauses shows which cap refused the calls.
    """

    def emit(self, record: logging.LogRecord) -> None:
        current = _CURRENT.get()
        if current is None or not isinstance(record.args, tuple) or len(record.args) < 3:
            return
        code, details = str(record.args[1]), str(record.args[2])
        limit = _LIMIT.search(details)
        cause = f"{code} {limit.group(0)}" if limit else f"{code} {details[:60]}"
        current[0].retries[f"{current[1]}: {cause}"] += 1


class Workload:
    """Blob contents (unique per put, from one random pool) and the ids stored so far."""

    def __init__(self, large_max: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.pool = self.rng.randbytes(large_max + 64 * 1024)
        self.large_max = large_max
        self.counter = itertools.count()
        self.stored: list[str] = []
        self.keep_all = False
        self.all_stored: list[str] = []

    def content(self, size: int) -> bytes:
        start = self.rng.randrange(0, len(self.pool) - size + 1)
        return next(self.counter).to_bytes(8, "big") + self.pool[start : start + size]

    def remember(self, blob_id: str) -> None:
        if self.keep_all:  # --hostile checks every acknowledged put at the end
            self.all_stored.append(blob_id)
        self.stored.append(blob_id)
        if len(self.stored) > 2000:
            del self.stored[: len(self.stored) - 1000]

    def known(self) -> str | None:
        return self.rng.choice(self.stored) if self.stored else None


def _check(blob_id: str, data: bytes) -> None:
    assert "sha256:" + hashlib.sha256(data).hexdigest() == blob_id, f"{blob_id}: wrong content"


# Each operation checks what it gets back against the id it asked for.


async def put_and_get(client: AsyncBlobClient, work: Workload, data: bytes) -> None:
    result = await client.put_bytes(data)  # streamed past 4 MiB
    _check(result.info.blob_id, data)
    work.remember(result.info.blob_id)
    _check(result.info.blob_id, (await client.get(result.info.blob_id)).data)


async def put(client: AsyncBlobClient, work: Workload, data: bytes) -> None:
    result = await client.put_bytes(data)
    _check(result.info.blob_id, data)
    work.remember(result.info.blob_id)


async def put_json(client: AsyncBlobClient, work: Workload, value: object) -> None:
    work.remember((await client.put_json(value)).info.blob_id)


async def get(client: AsyncBlobClient, blob_id: str) -> None:
    _check(blob_id, (await client.get(blob_id)).data)


async def probe(client: AsyncBlobClient, ids: list[str]) -> None:
    assert await Stats.part("find_missing", client.find_missing(ids)) == []
    if ids:
        assert await Stats.part("stat", client.stat(ids[0])) is not None


async def grpc_client(
    target: str,
    work: Workload,
    stats: Stats,
    until: float,
    large_every: int,
    retry: RetryPolicy | None = None,
) -> None:
    async with AsyncBlobClient(target, timeout=60, retry=retry or RetryPolicy.off()) as client:
        for n in itertools.count():
            if time.monotonic() >= until:
                return
            roll = work.rng.random()
            blob_id = work.known()
            if n % large_every == large_every - 1:
                size = work.rng.randrange(work.large_max // 4, work.large_max)
                await stats.timed(
                    "grpc put+get large", put_and_get(client, work, work.content(size))
                )
            elif roll < 0.35 or blob_id is None:
                size = work.rng.randrange(100, 64 * 1024)
                await stats.timed("grpc put small", put(client, work, work.content(size)))
            elif roll < 0.5:
                value = {"n": next(work.counter), "tags": ["soak", work.rng.random()]}
                await stats.timed("grpc put json", put_json(client, work, value))
            elif roll < 0.9:
                await stats.timed("grpc get", get(client, blob_id))
            else:
                ids = [i for i in (work.known() for _ in range(5)) if i]
                await stats.timed("grpc stat+find_missing", probe(client, ids))


class BridgeCaller:
    """JSON-RPC over HTTP to the bridge, one session per client."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url
        self._ids = itertools.count()

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        async with self._session.post(self._url, json=body) as response:
            reply = await response.json(content_type=None)
        assert "result" in reply, f"{method}: {reply.get('error')}"
        return reply["result"]

    async def put(self, work: Workload, data: bytes) -> None:
        params = {"data": base64.b64encode(data).decode(), "blob_type": "Binary"}
        blob_id = (await self.call("blobs/put", params))["blob_id"]
        _check(blob_id, data)
        work.remember(blob_id)

    async def get(self, blob_id: str) -> None:
        result = await self.call("blobs/get", {"blob_id": blob_id})
        if result["blob_type"] == "binary":
            content = base64.b64decode(result["data"])
        else:  # Json comes back parsed; its canonical form is what was hashed
            content = canonicalize_value(result["data"])
        _check(blob_id, content)


async def bridge_client(url: str, work: Workload, stats: Stats, until: float) -> None:
    async with aiohttp.ClientSession() as session:
        bridge = BridgeCaller(session, url)
        while time.monotonic() < until:
            blob_id = work.known()
            if blob_id is None or work.rng.random() < 0.5:
                size = work.rng.randrange(100, 32 * 1024)
                await stats.timed("bridge put", bridge.put(work, work.content(size)))
            else:
                await stats.timed("bridge get", bridge.get(blob_id))


async def sample_memory(
    pids: dict[str, int], until: float, samples: dict[str, list[tuple[float, int]]]
) -> None:
    processes = {name: psutil.Process(pid) for name, pid in pids.items()}
    started = time.monotonic()
    while time.monotonic() < until:
        for name, process in processes.items():
            with contextlib.suppress(psutil.Error):
                samples[name].append((time.monotonic() - started, process.memory_info().rss))
        await asyncio.sleep(0.25)


# -- the report -------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50_ms": at(0.5), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": ordered[-1] * 1000}


def memory_verdict(points: list[tuple[float, int]], slack_mib: float) -> dict[str, Any]:
    """Median RSS of the first and last thirds after warm-up, and whether it stayed flat."""
    rss = [value for _, value in points]
    steady = rss[len(rss) // 4 :]
    if len(steady) < 6:
        return {"flat": False, "reason": "too few samples", "samples": len(rss)}
    third = len(steady) // 3
    first, last = statistics.median(steady[:third]), statistics.median(steady[-third:])
    growth = (last - first) / MiB
    return {
        "flat": growth <= slack_mib,
        "first_third_median_mib": round(first / MiB, 1),
        "last_third_median_mib": round(last / MiB, 1),
        "growth_mib": round(growth, 1),
        "peak_mib": round(max(rss) / MiB, 1),
        "timeline_mib": [
            [round(t, 1), round(v / MiB, 1)] for t, v in points[:: max(1, len(points) // 40)]
        ],
    }


def _normal_traffic(
    args: argparse.Namespace,
    target: str,
    url: str | None,
    work: Workload,
    stats: Stats,
    until: float,
    retry: RetryPolicy | None,
) -> list[Awaitable[None]]:
    tasks: list[Awaitable[None]] = [
        grpc_client(target, work, stats, until, args.large_every, retry)
        for _ in range(args.clients)
    ]
    if url is not None:
        tasks += [bridge_client(url, work, stats, until) for _ in range(args.bridge_clients)]
    return tasks


async def soak(args: argparse.Namespace, target: str, pids: dict[str, int], url: str | None) -> int:
    stats = Stats()
    retry_log = logging.getLogger("blobstore.retry")
    retry_log.setLevel(logging.INFO)
    retry_log.propagate = False
    retry_log.addHandler(RetryCounter())
    work = Workload(args.large_mib * MiB, args.seed)
    started = time.monotonic()
    until = started + args.duration
    samples: dict[str, list[tuple[float, int]]] = defaultdict(list)
    memory_task = asyncio.ensure_future(sample_memory(pids, until, samples))
    hostile: dict[str, Any] | None = None
    if args.hostile:
        work.keep_all = True
        quiet = Stats()
        retry = RetryPolicy(retry_overloaded=True)
        quiet_until = started + args.duration * args.quiet_fraction
        await asyncio.gather(*_normal_traffic(args, target, url, work, quiet, quiet_until, retry))
        attack = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "scripts" / "soak_hostile.py"),
            "--target",
            target,
            *(["--url", url] if url else []),
            "--seconds",
            str(until - time.monotonic()),
            stdout=subprocess.PIPE,
        )
        await asyncio.gather(*_normal_traffic(args, target, url, work, stats, until, retry))
        output, _ = await attack.communicate()
        found = soak_hostile.Findings()
        if attack.returncode != 0 or not output.strip():
            found.violations.append(f"the attackers' process failed ({attack.returncode})")
        else:
            seen = json.loads(output.strip().splitlines()[-1])
            found.outcomes.update(seen["outcomes"])
            found.violations += seen["violations"]
        hostile = await _hostile_verdict(target, work, quiet, stats, found, samples)
        for name, count in quiet.errors.items():
            stats.errors[f"{name} (quiet)"] += count
        hostile["quiet_retries"] = dict(quiet.retries)
        hostile["quiet_latency_of_parts"] = {
            name: percentiles(v) for name, v in quiet.parts.items() if v
        }
    else:
        await asyncio.gather(*_normal_traffic(args, target, url, work, stats, until, None))
    await memory_task
    elapsed = time.monotonic() - started

    memory = {name: memory_verdict(points, args.rss_slack_mib) for name, points in samples.items()}
    operations = {name: len(values) for name, values in stats.latencies.items()}
    report = {
        "duration_s": round(elapsed, 1),
        "operations": sum(operations.values()),
        "ops_per_s": round(sum(operations.values()) / elapsed, 1),
        "errors": sum(stats.errors.values()),
        "errors_by_operation": dict(stats.errors),
        "error_examples": stats.examples,
        "latency": {name: percentiles(v) for name, v in stats.latencies.items() if v},
        "latency_of_parts": {name: percentiles(v) for name, v in stats.parts.items() if v},
        "retries": dict(stats.retries),
        "operations_by_name": operations,
        "memory": memory,
    }
    if hostile is not None:
        report["hostile"] = hostile
        # Memory under attack is judged by its peak against the budget, not by flatness.
        ok = report["errors"] == 0 and hostile["ok"]
    else:
        ok = report["errors"] == 0 and all(m["flat"] for m in memory.values())
    report["ok"] = ok
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0 if ok else 1


async def _hostile_verdict(
    target: str,
    work: Workload,
    quiet: Stats,
    loud: Stats,
    found: soak_hostile.Findings,
    samples: dict[str, list[tuple[float, int]]],
) -> dict[str, Any]:
    """The checks of --hostile (see the module docstring)."""
    async with AsyncBlobClient(target, timeout=120) as client:
        lost: list[str] = []
        acknowledged = sorted(set(work.all_stored))
        for start in range(0, len(acknowledged), 1000):
            lost += await client.find_missing(acknowledged[start : start + 1000])
    p99 = {}
    for name, values in loud.latencies.items():
        calm = quiet.latencies.get(name)
        if values and calm:
            before, after = percentiles(calm)["p99_ms"], percentiles(values)["p99_ms"]
            p99[name] = {
                "quiet_ms": round(before, 1),
                "hostile_ms": round(after, 1),
                "ok": after <= P99_FACTOR * before,
            }
    peak = max((value for _, value in samples.get("server", [])), default=0) / MiB
    limit = BUDGET_MIB + HOSTILE_RSS_CONSTANT_MIB
    verdict = {
        "acknowledged_puts": len(acknowledged),
        "lost_puts": lost[:20],
        "attacker_outcomes": dict(found.outcomes),
        "violations": found.violations,
        "p99": p99,
        "server_peak_mib": round(peak, 1),
        "server_peak_limit_mib": limit,
    }
    verdict["ok"] = (
        not lost
        and not found.violations
        and all(row["ok"] for row in p99.values())
        and peak <= limit
    )
    return verdict


def print_report(report: dict[str, Any]) -> None:
    print(
        f"{report['operations']} operations in {report['duration_s']} s "
        f"({report['ops_per_s']}/s), {report['errors']} errors"
    )
    for example in report["error_examples"]:
        print("  error:", example)
    print(f"{'operation':<26}{'count':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for name, p in sorted(report["latency"].items()):
        count = report["operations_by_name"][name]
        print(
            f"{name:<26}{count:>8}{p['p50_ms']:>10.1f}{p['p95_ms']:>10.1f}"
            f"{p['p99_ms']:>10.1f}{p['max_ms']:>10.1f}"
        )
    for name, p in sorted(report["latency_of_parts"].items()):
        print(f"  {name}: p50 {p['p50_ms']:.1f} p99 {p['p99_ms']:.1f} max {p['max_ms']:.1f} ms")
    for name, count in sorted(report["retries"].items()):
        print(f"  retried {count}x: {name}")
    for name, memory in report["memory"].items():
        verdict = "flat" if memory["flat"] else "NOT FLAT"
        print(
            f"{name} RSS: {memory.get('first_third_median_mib')} -> "
            f"{memory.get('last_third_median_mib')} MiB (peak {memory.get('peak_mib')}): {verdict}"
        )
        print("  over time (s, MiB):", " ".join(f"{t}:{v}" for t, v in memory["timeline_mib"]))
    if "hostile" in report:
        print("hostile:", json.dumps(report["hostile"], indent=1))
    print("OK" if report["ok"] else "FAILED")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--clients", type=int, default=16, help="gRPC clients (default 16)")
    parser.add_argument("--bridge-clients", type=int, default=4, help="bridge clients (default 4)")
    parser.add_argument("--no-bridge", action="store_true", help="gRPC only")
    parser.add_argument("--large-mib", type=int, default=8, help="largest blob, MiB (default 8)")
    parser.add_argument(
        "--large-every", type=int, default=25, help="every Nth gRPC operation is a large blob"
    )
    parser.add_argument("--target", help="an existing server (default: start one)")
    parser.add_argument("--server-pid", type=int, help="pid of --target's server, for its RSS")
    parser.add_argument("--bridge-url", help="an existing bridge, e.g. http://127.0.0.1:8080/")
    parser.add_argument("--bridge-pid", type=int, help="pid of --bridge-url's bridge")
    parser.add_argument(
        "--rss-slack-mib", type=float, default=48.0, help="allowed RSS growth (default 48)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--hostile", action="store_true", help="attackers next to the normal traffic"
    )
    parser.add_argument(
        "--quiet-fraction",
        type=float,
        default=0.25,
        help="with --hostile, the share of the run without attackers (default 0.25)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = parser.parse_args()
    if args.target:
        pids = {"server": args.server_pid} if args.server_pid else {}
        if args.bridge_url and args.bridge_pid:
            pids["bridge"] = args.bridge_pid
        url = None if args.no_bridge else args.bridge_url
        return asyncio.run(soak(args, args.target, pids, url))
    with (
        tempfile.TemporaryDirectory(prefix="blobstore-soak-") as folder,
        own_stack(Path(folder), bridge=not args.no_bridge, hostile=args.hostile) as (
            target,
            pid,
            url,
            bridge_pid,
        ),
    ):
        pids = {"server": pid}
        if bridge_pid is not None:
            pids["bridge"] = bridge_pid
        return asyncio.run(soak(args, target, pids, url))


if __name__ == "__main__":
    raise SystemExit(main())
