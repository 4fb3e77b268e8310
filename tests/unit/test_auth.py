"""The tokens file, the --anonymous policy and the scope decision (grpc/auth.py)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blobstore import errors
from blobstore.grpc.auth import (
    _RULES,
    AuthConfigError,
    Authenticator,
    TokenTable,
    parse_anonymous,
    parse_tokens,
    token_hash,
)
from blobstore.security.authority import Authority
from blobstore.status import to_status


def authenticator(tmp_path: Path, anonymous: str = "") -> Authenticator:
    path = tmp_path / "tokens"
    path.write_text(
        f"# comment\n\n{token_hash('r')} reader read  # trailing comment\n"
        f"{token_hash('w')} writer read,write\n"
    )
    return Authenticator(Authority(TokenTable(path), parse_anonymous(anonymous)), 1.0)


def test_every_gated_method_has_a_scope() -> None:
    scopes = {path.rsplit("/", 1)[1]: rule.scope for path, rule in _RULES.items()}
    assert scopes == {
        "Put": "write",
        "PutStream": "write",
        "PutBlob": "write",
        "BatchPut": "write",
        "Get": "read",
        "GetStream": "read",
        "Stat": "read",
        "FindMissing": "read",
        "GetBlob": "read",
        "BatchGet": "read",
        "Delete": "admin",
        "Prune": "admin",
    }
    assert {rule.api for rule in _RULES.values()} == {"blobstore.v1", "stepflow.v1"}


def test_decisions(tmp_path: Path) -> None:
    auth = authenticator(tmp_path, "stepflow.v1=read")
    put = _RULES["/blobstore.v1.BlobService/Put"]
    stat = _RULES["/blobstore.v1.BlobService/Stat"]
    get_blob = _RULES["/stepflow.v1.BlobService/GetBlob"]
    put_blob = _RULES["/stepflow.v1.BlobService/PutBlob"]
    assert auth.check(put, "Bearer w") is None
    assert auth.check(put, "bearer w") is None  # the scheme is case-insensitive (RFC 7235)
    assert auth.check(stat, "Bearer r") is None
    assert isinstance(auth.check(put, "Bearer r"), errors.PermissionDenied)
    assert isinstance(auth.check(put, "Bearer x"), errors.Unauthenticated)
    assert isinstance(auth.check(put, "Basic w"), errors.Unauthenticated)
    assert isinstance(auth.check(put, "Bearer "), errors.Unauthenticated)
    assert isinstance(auth.check(stat, None), errors.Unauthenticated)
    assert auth.check(get_blob, None) is None
    assert isinstance(auth.check(put_blob, None), errors.Unauthenticated)


def test_refusals_go_through_the_one_table(tmp_path: Path) -> None:
    auth = authenticator(tmp_path)
    put = _RULES["/blobstore.v1.BlobService/Put"]
    denied = auth.check(put, "Bearer r")
    unknown = auth.check(put, "Bearer secret-value")
    assert denied is not None and unknown is not None
    assert to_status(denied)[0] == grpc.StatusCode.PERMISSION_DENIED
    code, message, _ = to_status(unknown)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "secret-value" not in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("abc reader read", "must be sha256:"),
        (f"{token_hash('x')} reader", "found 2 field(s)"),
        (f"{token_hash('x')} reader delete", "unknown scope(s) delete"),
        ("sha256:" + "zz" * 32 + " reader read", "not hexadecimal"),
    ],
)
def test_bad_tokens_files_name_the_line(text: str, words: str) -> None:
    with pytest.raises(AuthConfigError, match="line 2") as raised:
        parse_tokens("# first line\n" + text)
    assert words in str(raised.value)


def test_anonymous_policy() -> None:
    assert parse_anonymous("") == {}
    assert parse_anonymous("stepflow.v1=read,write; blobstore.v1=read") == {
        "stepflow.v1": frozenset({"read", "write"}),
        "blobstore.v1": frozenset({"read"}),
    }
    for bad in ("stepflow.v1", "x.v1=read", "stepflow.v1=root"):
        with pytest.raises(AuthConfigError):
            parse_anonymous(bad)


def test_a_reload_that_fails_keeps_the_tokens(tmp_path: Path) -> None:
    auth = authenticator(tmp_path)
    tokens = auth.authority.tokens
    assert tokens is not None
    tokens.path.write_text("not a tokens file\n")
    assert not tokens.reload()
    assert tokens.find("w") is not None
    tokens.path.write_text(f"{token_hash('n')} new write\n")
    assert tokens.reload()
    assert tokens.find("w") is None and tokens.find("n") is not None


@given(st.text(max_size=200))
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_authorization_value_is_a_clean_decision(tmp_path: Path, header: str) -> None:
    """Random `authorization` values: never an exception; allowed only for a known token."""
    auth = authenticator(tmp_path)
    put = _RULES["/blobstore.v1.BlobService/Put"]
    decision = auth.check(put, header)
    allowed = header[:7].lower() == "bearer " and header[7:].strip() == "w"
    assert (decision is None) == allowed
    assert decision is None or isinstance(
        decision, errors.Unauthenticated | errors.PermissionDenied
    )
