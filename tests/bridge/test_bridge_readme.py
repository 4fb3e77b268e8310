"""The README's bridge section does what it says, run through the README's own run command.

`scripts/serve` starts the gRPC service and the bridge (on free ports, data
in a temp folder, set through their environment variables); the section's
`curl` commands must print exactly the responses shown under them, and its
stdio snippet must print what its comment says. Then the script must stop
both services when one dies, and on Ctrl-C.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
README_URL = "http://127.0.0.1:8080/"
_GRPC_LINE = re.compile(r"gRPC BlobService:\s+(\S+) \(data in (.*)\)")
_BRIDGE_LINE = re.compile(r"JSON-RPC bridge:\s+(http://\S+/) ")


def bridge_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- bridge-section -->")
    end = text.index("<!-- ", start + 1)
    return text[start:end]


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, content) of every fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def curl_examples() -> list[tuple[str, str]]:
    """(command, the response shown right after it) for each curl example."""
    blocks = fenced_blocks(bridge_section())
    examples = []
    for (language, content), (next_language, shown) in itertools.pairwise(blocks):
        if language == "sh" and "curl" in content:
            assert next_language == "json", f"no response shown after:\n{content}"
            examples.append((content, shown))
    return examples


def stdio_snippet() -> str:
    blocks = fenced_blocks(bridge_section())
    snippets = [content for language, content in blocks if language == "python"]
    assert len(snippets) == 1
    return snippets[0]


@dataclass
class Serve:
    """A running scripts/serve: the script, and where it says the two services listen."""

    proc: subprocess.Popen[str]
    grpc_target: str
    data_dir: Path
    url: str
    output: list[str]

    def children(self) -> list[psutil.Process]:
        children: list[psutil.Process] = psutil.Process(self.proc.pid).children(recursive=True)
        return children


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    env = {
        **os.environ,
        "BLOBSTORE_ADDRESS": "127.0.0.1:0",
        "BLOBSTORE_DATA_DIR": str(tmp_path / "data"),
        "BLOBSTORE_BRIDGE_HTTP": "127.0.0.1:0",
    }
    env.pop("BLOBSTORE_BRIDGE_GRPC_TARGET", None)
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(
            [str(ROOT / "scripts" / "serve")],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            start_new_session=True,  # Ctrl-C goes to the whole group, as in a terminal
        )
        try:
            assert proc.stdout is not None
            output: list[str] = []
            lines = iter(proc.stdout.readline, "")
            for line in lines:
                output.append(line)
                if line.startswith("Ctrl-C"):
                    break
            text = "".join(output)
            grpc_line, bridge_line = _GRPC_LINE.search(text), _BRIDGE_LINE.search(text)
            assert grpc_line and bridge_line, text + (tmp_path / "serve.log").read_text()
            # Keep reading, so the script never blocks on a full pipe.
            threading.Thread(target=output.extend, args=(lines,), daemon=True).start()
            yield Serve(
                proc, grpc_line.group(1), Path(grpc_line.group(2)), bridge_line.group(1), output
            )
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def test_readme_examples_work_against_scripts_serve(serve: Serve) -> None:
    assert serve.data_dir.is_dir()
    examples = curl_examples()
    assert len(examples) >= 3
    for command, shown in examples:
        assert README_URL in command
        result = subprocess.run(
            ["bash", "-c", command.replace(README_URL, serve.url)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(result.stdout) == json.loads(shown), command

    snippet = stdio_snippet()
    expected = re.search(r"^# prints (.+)$", snippet, flags=re.MULTILINE)
    assert expected is not None
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "BLOBSTORE_BRIDGE_GRPC_TARGET": serve.grpc_target,
    }
    result = subprocess.run(
        [sys.executable, "-c", snippet],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    assert result.stdout.strip() == expected.group(1).strip()


def test_scripts_serve_stops_everything_when_one_service_dies(serve: Serve) -> None:
    children = serve.children()
    grpc_server = [c for c in children if running(c, "blobstore")]
    bridge = [c for c in children if running(c, "blobstore-bridge")]
    assert len(grpc_server) == 1 and len(bridge) == 1, [c.cmdline() for c in children]
    grpc_server[0].kill()
    assert serve.proc.wait(60) != 0
    _, alive = psutil.wait_procs(bridge, timeout=30)
    assert not alive


def test_scripts_serve_stops_both_on_ctrl_c(serve: Serve) -> None:
    children = serve.children()
    os.killpg(serve.proc.pid, signal.SIGINT)
    assert serve.proc.wait(60) == 130
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive


def running(process: psutil.Process, program: str) -> bool:
    """Whether `process` runs the console script `program` (python path/to/program ...)."""
    try:
        return any(Path(part).name == program for part in process.cmdline()[:2])
    except psutil.NoSuchProcess:
        return False
