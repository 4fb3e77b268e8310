"""The bridge's pure parts, in process: stdio line framing and the request-body codec."""

from __future__ import annotations

import argparse
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore import errors as store_errors
from blobstore.canonical_json import canonicalize_text
from jsonrpc_bridge import config, errors
from jsonrpc_bridge.json_codec import Invalid, InvalidValue, ParseError, decode, encode_value
from jsonrpc_bridge.protocol import JsonRpcCore
from jsonrpc_bridge.stdio_transport import TOO_LONG, LineFramer

# -- LineFramer ------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_framing_does_not_depend_on_how_the_stream_is_cut(
    lines: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    framer = LineFramer(limit=30)
    out: list[bytes | None] = []
    previous = 0
    for cut in sorted({*cuts, len(stream)}):
        cut = min(cut, len(stream))
        out += framer.feed(stream[previous:cut])
        previous = cut
    out += framer.finish()
    expected = [TOO_LONG if len(line) > 30 else line for line in lines if line.strip()]
    assert out == expected


def test_too_long_line_is_reported_once_and_never_buffered_whole() -> None:
    framer = LineFramer(limit=10)
    assert framer.feed(b"0123456789") == []
    assert framer.feed(b"X") == [TOO_LONG]
    for _ in range(1000):
        assert framer.feed(b"more of the same line ") == []
    assert framer.feed(b"end\nok\n") == [b"ok"]
    assert framer.feed(b"last") == []
    assert framer.finish() == [b"last"]


# -- the body codec ------------------------------------------------------------------


def test_decode_keeps_integers_exact_and_number_spellings() -> None:
    value = decode(b'{"big": 123456789012345678901234567890, "f": 1.50, "e": 1E2}')
    assert isinstance(value, dict)
    assert value["big"] == 123456789012345678901234567890
    assert encode_value(value, "params.data") == (
        b'{"big":123456789012345678901234567890,"f":1.50,"e":1E2}'
    )


def test_decode_marks_what_no_blob_may_hold() -> None:
    value = decode(b'[{"a": 1, "a": 2}, NaN, -Infinity]')
    assert isinstance(value, list)
    assert all(isinstance(item, Invalid) for item in value)
    with pytest.raises(InvalidValue) as caught:
        encode_value(value, "params.data")
    assert caught.value.path == "params.data[0]"
    assert "duplicate object key 'a'" in caught.value.reason


@pytest.mark.parametrize(
    "body", [b"", b"{", b"[1,]", b"\xc3\x28", b"\xef\xbb\xbf{}", b"1 2", b"[" * 50_000]
)
def test_decode_refuses_what_is_not_one_json_value(body: bytes) -> None:
    with pytest.raises(ParseError):
        decode(body)


json_texts = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**100), max_value=2**100)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=10,
).map(json.dumps)


@settings(max_examples=100, deadline=None)
@given(text=json_texts)
def test_forwarded_text_canonicalises_as_the_original(text: str) -> None:
    forwarded = encode_value(decode(text.encode()), "params.data")
    canonical = canonicalize_text(text)
    # The service hashes the canonical form: equal canonical text, equal id.
    assert canonicalize_text(forwarded) == canonical


# -- configuration ------------------------------------------------------------------


def test_environment_sets_defaults_and_flags_win() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(
        parser,
        {
            "BLOBSTORE_BRIDGE_GRPC_TARGET": "10.0.0.1:1",
            "BLOBSTORE_BRIDGE_STDIO": "true",
            "BLOBSTORE_BRIDGE_MAX_REQUEST_BYTES": "1000",
        },
    )
    cfg = config.from_arguments(parser.parse_args(["--max-request-bytes", "2000"]))
    assert cfg.grpc_target == "10.0.0.1:1"
    assert cfg.stdio is True
    assert cfg.max_request_bytes == 2000
    assert config.split_address("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ValueError, match="host:port"):
        config.split_address("localhost")


# -- the error table and the core's last line of defence ---------------------------------


def test_service_errors_have_distinct_codes_in_the_server_range() -> None:
    codes = [row.code for row in errors.SERVICE_ERRORS]
    assert len(set(codes)) == len(codes)
    assert all(-32099 <= code <= -32000 for code in codes)
    missing = errors.from_store_error(store_errors.BlobNotFound("sha256:" + "a" * 64), "x")
    assert (missing.code, missing.message) == (-32008, "Blob not found")
    assert missing.data["blob_id"] == "sha256:" + "a" * 64
    for row in errors.SERVICE_ERRORS:
        if row.error is not store_errors.BlobNotFound:
            error = errors.from_store_error(row.error("why"), "params.data")
            assert error.code == row.code and error.data["reason"] == row.reason
            assert "why" in str(error.data["detail"])
    invalid = errors.from_store_error(store_errors.InvalidJson("bad"), "params.data")
    assert invalid.code == -32602 and invalid.data["field"] == "params.data"


async def test_an_unexpected_exception_is_logged_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(params: object) -> object:
        raise RuntimeError("secret internal state")

    core = JsonRpcCore({"broken": broken})
    body = await core.handle(b'{"jsonrpc": "2.0", "id": 1, "method": "broken"}')
    assert body is not None
    response = json.loads(body)
    assert response["id"] == 1
    assert response["error"]["code"] == -32603
    assert "secret" not in body.decode() and "Traceback" not in body.decode()
    assert "secret internal state" in caplog.text  # with its traceback, in the log
