"""Which token an upstream call of the bridge carries (jsonrpc_bridge/upstream_auth.py),
and who a client certificate makes a caller (jsonrpc_bridge/client_identity.py).

The processes with real TLS and a real token server are in test_bridge_security.py;
these pin the precedence and the settings' checks without a network.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from blobstore.security.authority import Principal
from jsonrpc_bridge.client_identity import (
    AuthConfigError,
    Caller,
    ClientIdentities,
    certificate_names,
    current_caller,
    scoped_batch_methods,
    scoped_methods,
)
from jsonrpc_bridge.errors import RpcError
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


# A certificate as Python's ssl reports a verified peer (SSLObject.getpeercert()).
PEERCERT = {
    "subject": ((("organizationName", "blobs"),), (("commonName", "worker-1"),)),
    "subjectAltName": (
        ("DNS", "worker.internal"),
        ("URI", "spiffe://blobs/worker-2"),
        ("IP Address", "10.0.0.1"),
    ),
}


def test_certificate_names_are_looked_up_most_specific_first() -> None:
    assert certificate_names(PEERCERT) == [
        "uri:spiffe://blobs/worker-2",
        "dns:worker.internal",
        "cn:worker-1",
    ]
    assert certificate_names({}) == []


def test_who_a_request_is_and_what_it_may_do(tmp_path: Path) -> None:
    path = tmp_path / "identities"
    path.write_text("cn:worker-1 reader read\ndns:worker.internal host read,write\n")
    identities = ClientIdentities(str(path))
    # A header passes through whatever the certificate: the gRPC server decides.
    assert identities.identify("Bearer t", PEERCERT).principal is None
    assert not identities.identify("Bearer t", PEERCERT).refusal
    # The DNS line is more specific than the CN line.
    caller = identities.identify(None, PEERCERT)
    assert caller.principal is not None and caller.principal.name == "host"
    assert caller.shown == "certificate 'host' (dns:worker.internal)"
    cn_only = identities.identify(None, {"subject": ((("commonName", "worker-1"),),)})
    stranger = identities.identify(None, {"subject": ((("commonName", "stranger"),),)})
    assert "'cn:stranger' has no line" in stranger.refusal and stranger.principal is None
    assert identities.identify(None, None).refusal  # nothing presented

    async def put(params: object) -> object:
        return "stored"

    async def put_many(batch: list[object]) -> list[object]:
        return ["stored"] * len(batch)

    methods = scoped_methods({"blobs/put": put}, {"blobs/put": "write"})
    batches = scoped_batch_methods({"blobs/put": put_many}, {"blobs/put": "write"})

    async def as_caller(who: Caller | None) -> tuple[object, list[object]]:
        reset = current_caller.set(who)
        try:
            try:
                single: object = await methods["blobs/put"]({})
            except RpcError as exc:
                single = exc.code
            many = await batches["blobs/put"]([{}, {}])
            return single, [r.code if isinstance(r, RpcError) else r for r in many]
        finally:
            current_caller.reset(reset)

    assert asyncio.run(as_caller(caller)) == ("stored", ["stored", "stored"])
    assert asyncio.run(as_caller(cn_only)) == (-32011, [-32011, -32011])
    assert asyncio.run(as_caller(None)) == ("stored", ["stored", "stored"])  # not decided here


def test_the_service_token_serves_certificate_callers_only(tmp_path: Path) -> None:
    with pytest.raises(UpstreamConfigError, match="--upstream-tls-cert"):
        configure("127.0.0.1:1", certificate_callers=True, environ={})
    auth = configure(
        "127.0.0.1:1", certificate_callers=True, environ={"BLOBSTORE_TOKEN": "service-6"}
    )
    assert auth.token_for_call() is None  # no request of a certificate
    principal = Principal("builder", "certificate", frozenset({"write"}))
    reset = current_caller.set(Caller("certificate 'builder'", principal))
    try:
        assert auth.token_for_call() == "Bearer service-6"
        header = caller_authorization.set("Bearer callers-7")
        assert auth.token_for_call() == "Bearer callers-7"  # a header still wins
        caller_authorization.reset(header)
    finally:
        current_caller.reset(reset)
    refused = current_caller.set(Caller("certificate 'cn:x'", refusal="no line"))
    try:
        assert auth.token_for_call() is None
    finally:
        current_caller.reset(refused)


def test_identities_files_that_cannot_serve(tmp_path: Path) -> None:
    path = tmp_path / "identities"
    path.write_text("sha256:" + "0" * 64 + " someone read\n")
    with pytest.raises(AuthConfigError, match="no cn:, dns: or uri: line"):
        ClientIdentities(str(path))
    path.write_text("cn:worker-1 reader read,everything\n")
    with pytest.raises(AuthConfigError, match="line 1"):
        ClientIdentities(str(path))


def test_sighup_rereads_the_service_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-8\n")
    auth = configure("127.0.0.1:1", token_file=str(token_file), environ={})
    token_file.write_text("second-9\n")
    assert auth.reload() and auth.token_for_call() == "Bearer second-9"
    for broken in ("", "two words"):  # refused: the token in force stays
        token_file.write_text(broken)
        assert not auth.reload() and auth.token_for_call() == "Bearer second-9"
    token_file.unlink()
    assert not auth.reload() and auth.token_for_call() == "Bearer second-9"
    from_env = configure("127.0.0.1:1", environ={"BLOBSTORE_TOKEN": "env-10"})
    assert not from_env.reload() and from_env.token_for_call() == "Bearer env-10"
