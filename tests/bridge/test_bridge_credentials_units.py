"""Which token an upstream call of the bridge carries (jsonrpc_bridge/upstream_auth.py).

The processes with real TLS and a real token server are in test_bridge_security.py;
these pin the precedence and the settings' checks without a network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jsonrpc_bridge.upstream_auth import (
    UpstreamConfigError,
    caller_authorization,
    configure,
    loopback_target,
)


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("127.0.0.1:1,127.0.0.2:2", True),
        ("dns:///localhost:50051", True),
        ("unix:/run/blobstore.sock", True),
        ("192.0.2.1:50051", False),
        ("127.0.0.1:1,192.0.2.1:2", False),
        ("0.0.0.0:50051", False),
    ],
)
def test_loopback_targets(target: str, loopback: bool) -> None:
    assert loopback_target(target) is loopback


def test_the_callers_header_wins_then_the_service_token_then_none(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file-1\n")
    auth = configure("127.0.0.1:1", token_file=str(token_file), environ={})
    assert auth.token_for_call() == "Bearer from-file-1"
    reset = caller_authorization.set("Bearer callers-2")
    try:
        assert auth.token_for_call() == "Bearer callers-2"
        caller_authorization.set("Bearer caf\u00e9")  # not metadata: never sent
        assert auth.token_for_call() is None
    finally:
        caller_authorization.reset(reset)
    assert configure("127.0.0.1:1", environ={}).token_for_call() is None
    from_env = configure("127.0.0.1:1", environ={"BLOBSTORE_TOKEN": " env-3 "})
    assert from_env.token_for_call() == "Bearer env-3"
    both = configure("127.0.0.1:1", token_file=str(token_file), environ={"BLOBSTORE_TOKEN": "x"})
    assert both.service_token == "from-file-1"  # the flag wins over the variable


def test_no_token_goes_in_plaintext_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(UpstreamConfigError, match="plaintext"):
        configure("192.0.2.1:50051", environ={"BLOBSTORE_TOKEN": "secret-4"})
    passing = configure("192.0.2.1:50051", environ={})
    assert not passing.sends_tokens and passing.interceptors() == []
    reset = caller_authorization.set("Bearer callers-5")
    try:
        assert passing.token_for_call() is None
    finally:
        caller_authorization.reset(reset)


@pytest.mark.parametrize(
    ("token", "words"),
    [("two words", "one word"), ("caf\u00e9", "one word"), ("", "is empty")],
)
def test_unusable_service_tokens(tmp_path: Path, token: str, words: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(token)
    with pytest.raises(UpstreamConfigError, match=words) as refused:
        configure("127.0.0.1:1", token_file=str(token_file), environ={})
    assert token not in str(refused.value) or not token
