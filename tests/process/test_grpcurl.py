"""The README's grpcurl commands, run exactly as written with the real grpcurl binary.

The ```sh block of the README's grpcurl section is the script: each command runs through
bash with only the address changed to the test server's, and what it prints must equal
the output the README shows in the comment lines right below it. On top of that the
test checks what an operator relies on: the four services are listed, the README's
literal blob id is the content id of its example document, the document comes back as
JSON, and both health checks answer SERVING.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from blobstore.canonical_json import canonicalize_value
from blobstore.grpc.auth import token_hash
from tests.processes import ServerProcess
from tests.rpc_helpers import grpcurl_dir
from tests.tls_certs import make_pki, server_tls_args

README = Path(__file__).resolve().parents[2] / "README.md"
README_ADDRESS = "127.0.0.1:50051"
SECTION_MARKER = "<!-- grpcurl-section -->"
TLS_SECTION_MARKER = "<!-- grpcurl-tls-section -->"
SERVICES = {
    "blobstore.v1.BlobService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "stepflow.v1.BlobService",
}


@dataclass
class Command:
    """One README command and the output the README shows for it (comment lines below it)."""

    text: str
    shown: list[str]

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)

    def shown_json(self) -> Any:
        return json.loads("\n".join(self.shown))


def readme_commands(marker: str = SECTION_MARKER) -> list[Command]:
    """Parses the first ```sh block after the section marker."""
    text = README.read_text(encoding="utf-8")
    assert marker in text, f"README.md has no {marker} line"
    section = text.split(marker, 1)[1]
    match = re.search(r"^```sh\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    assert match, "the README's grpcurl section has no ```sh block"
    return _parse_block(match.group(1))


def _parse_block(block: str) -> list[Command]:
    # Comments after a blank line describe the next command; comments directly after a
    # command (no blank line between) are its output.
    commands: list[Command] = []
    current: Command | None = None
    pending = ""
    for line in block.splitlines():
        if pending or (line.strip() and not line.startswith("#")):
            continued = line.endswith("\\")
            pending += line.removesuffix("\\").strip() + " "
            if not continued:
                current = Command(pending.strip(), [])
                commands.append(current)
                pending = ""
        elif not line.strip():
            current = None
        elif current is not None:
            current.shown.append(line.removeprefix("#").removeprefix(" "))
    assert not pending, f"README command ends with a line continuation: {pending!r}"
    return commands


def run_in_bash(
    command: Command, target: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs the command text through bash with the real grpcurl first on PATH."""
    assert command.argv[0] == "grpcurl", f"not a grpcurl command: {command.text}"
    assert README_ADDRESS in command.text, f"command does not use {README_ADDRESS}: {command.text}"
    path = f"{grpcurl_dir()}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-c", command.text.replace(README_ADDRESS, target)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {}), "PATH": path},
        cwd=cwd,
        timeout=60,
        check=False,
    )


def run_as_written(
    command: Command, target: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> str:
    """Runs a README command against the test server; it must succeed."""
    done = run_in_bash(command, target, cwd, env)
    assert done.returncode == 0, f"{command.text}\nexit {done.returncode}:\n{done.stderr}"
    return done.stdout


def assert_shown_output(command: Command, output: str) -> None:
    assert command.shown, f"the README shows no output for: {command.text}"
    try:
        shown = command.shown_json()
    except json.JSONDecodeError:
        assert output.rstrip("\n").splitlines() == command.shown, command.text
    else:
        got = json.loads(output)
        # A time (Stat's last use) differs from run to run: that there is one is checked.
        if isinstance(shown, dict) and "last_used" in shown:
            assert datetime.fromisoformat(got.pop("last_used")).tzinfo is not None
            shown = {k: v for k, v in shown.items() if k != "last_used"}
        assert got == shown, command.text


def rpc_of(command: Command) -> str:
    """The method a command calls (e.g. "blobstore.v1.BlobService/Put") or its verb."""
    argv = command.argv
    return argv[argv.index(README_ADDRESS) + 1]


def request_of(command: Command) -> Any:
    argv = command.argv
    return json.loads(argv[argv.index("-d") + 1]) if "-d" in argv else {}


def content_id(value: object) -> str:
    return "sha256:" + hashlib.sha256(canonicalize_value(value)).hexdigest()


def test_readme_commands_cover_what_operators_need() -> None:
    calls = [(rpc_of(c), request_of(c)) for c in readme_commands()]
    assert ("list", {}) in calls
    assert ("describe", {}) in calls
    assert ("grpc.health.v1.Health/Check", {}) in calls
    assert ("grpc.health.v1.Health/Check", {"service": "blobstore.v1.BlobService"}) in calls
    puts = [r for m, r in calls if m == "blobstore.v1.BlobService/Put"]
    assert puts and all("json" in r and "data" not in r for r in puts), "Put must send JSON"
    gets = [r for m, r in calls if m == "blobstore.v1.BlobService/Get"]
    assert gets and all(r.get("as_json_value") is True for r in gets)
    assert any(m == "blobstore.v1.BlobService/Stat" for m, _ in calls)


def test_readme_grpcurl_commands_work_as_shown(server: ServerProcess) -> None:
    commands = readme_commands()
    outputs: dict[str, Any] = {}
    for command in commands:
        output = run_as_written(command, server.target)
        assert_shown_output(command, output)
        method = rpc_of(command)
        if method == "list":
            assert set(output.split()) == SERVICES
        elif method == "describe":
            assert "blobstore.v1.BlobService is a service:" in output
        else:
            outputs[f"{method} {json.dumps(request_of(command))}"] = json.loads(output)

    put_command = next(c for c in commands if rpc_of(c) == "blobstore.v1.BlobService/Put")
    document = request_of(put_command)["json"]
    put = outputs[f"blobstore.v1.BlobService/Put {json.dumps(request_of(put_command))}"]
    # The README writes the id literally; it must be the document's content id.
    assert put["id"] == put_command.shown_json()["id"] == content_id(document)
    assert put["blob_type"] == "BLOB_TYPE_JSON"
    assert put["created"] is True
    assert int(put["size"]) == len(canonicalize_value(document))
    assert canonicalize_value(document).decode() in README.read_text(encoding="utf-8")

    for key, reply in outputs.items():
        if key.startswith("blobstore.v1.BlobService/Get "):
            assert reply["id"] == put["id"]
            assert reply["json"] == document
        elif key.startswith("blobstore.v1.BlobService/Stat "):
            assert isinstance(reply.pop("last_used"), str)
            assert reply == {
                "id": put["id"],
                "exists": True,
                "blob_type": "BLOB_TYPE_JSON",
                "size": put["size"],
            }
        elif key.startswith("grpc.health.v1.Health/Check "):
            assert reply == {"status": "SERVING"}

    again = json.loads(run_as_written(put_command, server.target))
    assert again["id"] == put["id"]
    assert again.get("created", False) is False


@pytest.mark.parametrize(
    ("request_id", "code", "reason"),
    [
        ("sha256:" + "0" * 64, "NotFound", "BLOB_NOT_FOUND"),
        ("../../etc/passwd", "InvalidArgument", "INVALID_BLOB_ID"),
    ],
)
def test_grpcurl_shows_error_status_and_reason(
    server: ServerProcess, request_id: str, code: str, reason: str
) -> None:
    command = Command(
        f"grpcurl -plaintext -d {shlex.quote(json.dumps({'id': request_id}))} "
        f"{README_ADDRESS} blobstore.v1.BlobService/Get",
        [],
    )
    done = run_in_bash(command, server.target)
    assert done.returncode != 0
    assert f"Code: {code}" in done.stderr
    assert f'"reason":"{reason}"' in done.stderr
    assert "Traceback" not in done.stderr


def test_readme_tls_commands_work_as_shown(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The README's mTLS + token commands, with certificates made at test time."""
    pki = make_pki(tmp_path / "pki")
    for source, name in (
        (pki.ca, "ca.crt"),
        (pki.client.cert, "client.crt"),
        (pki.client.key, "client.key"),
    ):
        shutil.copy(source, tmp_path / name)
    token = "readme-writer-token-5e0c7a"
    tokens = tmp_path / "tokens"
    # The README's client certificate is worker-1 (tests/tls_certs.py), with scope read.
    tokens.write_text(f"{token_hash(token)} readme-writer read,write\ncn:worker-1 worker read\n")
    server = start_server(
        "--tokens-file",
        str(tokens),
        *server_tls_args(pki, client_ca=True),
    )
    commands = readme_commands(TLS_SECTION_MARKER)
    assert [rpc_of(c) for c in commands] == [
        "blobstore.v1.BlobService/Put",
        "blobstore.v1.BlobService/Stat",
    ]
    for command in commands:
        assert {"-cacert", "-cert", "-key"} <= set(command.argv)
    assert "-H" in commands[0].argv
    # Without the token the Put is refused: the certificate alone may only read.
    refused = run_in_bash(commands[0], server.target, tmp_path, {"BLOBSTORE_TOKEN": ""})
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, refused.stderr
    refused = run_in_bash(
        Command(commands[0].text.replace(' -H "authorization: Bearer $BLOBSTORE_TOKEN"', ""), []),
        server.target,
        tmp_path,
    )
    assert refused.returncode != 0 and "PermissionDenied" in refused.stderr, refused.stderr
    for command in commands:
        output = run_as_written(command, server.target, tmp_path, {"BLOBSTORE_TOKEN": token})
        assert_shown_output(command, output)
    assert token not in server.log()
