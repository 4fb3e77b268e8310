"""A faster OTLP encoding of finished spans, byte for byte the OpenTelemetry exporter's.

Fenced fast path (tracing.start installs it; nothing else uses it). What it buys:
the OTLP/HTTP exporter encodes each batch by building a protobuf object per span,
per attribute and per value (opentelemetry-exporter-otlp-proto-common), and that
encoding, in the batch thread, took more of the server's core than the span itself
(docs/performance.md, "What observing a call costs"). Spans of one server carry the
same few attributes over and over (rpc.system, rpc.service, rpc.method, the status
code), so here each span is written straight as protobuf wire format, with every
attribute's encoded bytes made once and kept.

It writes the same message the library builds: fields in number order, proto3
defaults left out, the library's choices kept (the span flags with the is-remote
bits, a Status present even when unset). A span it does not cover (events, links,
dropped counts, attribute values other than str/bool/int/float) is encoded by the
library itself and its bytes put in place, so any span goes out as the library would
send it. tests/unit/test_otlp_encoding.py holds this to the library's own bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from blobstore.grpc.wire import varint

_CACHE_LIMIT = 4096
# The span flags the library sets: "has is-remote" (0x100), and "is remote" (0x200)
# when the parent came from another process.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
# The start (7) and end (8) times: two fixed64 fields.
_TIMES = struct.Struct("<BQBQ").pack
_SPAN_KIND = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}


def _varint(value: int) -> bytes:
    """A varint; a negative int64 as protobuf writes it (ten bytes of two's complement)."""
    if 0 <= value < 0x80:
        return _SMALL[value]
    return varint(value + (1 << 64) if value < 0 else value)


_NOTHING = object()
_SMALL = [bytes((n,)) for n in range(0x80)]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _text(number: int, value: str | None) -> bytes:
    return _field(number, value.encode()) if value else b""


def _any_value(value: object) -> bytes | None:
    """An AnyValue (a oneof: written even when it holds its default), or None if the
    value is of a kind left to the library."""
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, bool):  # before int: a bool is an int
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + _varint(value) if -(1 << 63) <= value < 1 << 63 else None
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    return None


class SpanEncoder:
    """Encodes batches of finished spans (the SDK's ReadableSpan) as an OTLP
    ExportTraceServiceRequest. `library(spans)` is the library's encoder (its
    ExportTraceServiceRequest message): it encodes what this one does not cover,
    and each resource's and scope's own fields (once per resource and scope)."""

    def __init__(self, library: Callable[[Sequence[Any]], Any]) -> None:
        self._library = library
        self._attributes: dict[tuple[str, type, object], bytes | None] = {}
        self._heads: dict[tuple[str, Any], bytes] = {}
        self._tails: dict[tuple[Any, str | None, bool], bytes] = {}
        self._envelopes: dict[tuple[Any, Any], tuple[bytes, bytes, bytes, bytes]] = {}

    def encode(self, spans: Sequence[Any]) -> bytes:
        """The ExportTraceServiceRequest's bytes."""
        # Grouped as the library groups them: by resource, then by scope (their equality),
        # in order of first appearance.
        # A Resource hashes by its attributes as JSON, so a span whose resource is the
        # previous span's (all of one process's) joins its group without hashing it.
        groups: dict[Any, dict[Any, list[bytes]]] = {}
        resource: Any = _NOTHING
        scope: Any = _NOTHING
        group: list[bytes] = []
        for span in spans:
            if span.resource is not resource or (span.instrumentation_scope or None) is not scope:
                resource, scope = span.resource, span.instrumentation_scope or None
                group = groups.setdefault(resource, {}).setdefault(scope, [])
            group.append(self.span(span))
        out = []
        for resource, scopes in groups.items():
            parts = []
            for scope, encoded in scopes.items():
                resource_head, resource_tail, scope_head, scope_tail = self._envelope(
                    resource, scope
                )
                parts.append(
                    _field(2, scope_head + b"".join(_field(2, s) for s in encoded) + scope_tail)
                )
            out.append(_field(1, resource_head + b"".join(parts) + resource_tail))
        return b"".join(out)

    def encode_request(self, spans: Sequence[Any]) -> _Encoded:
        """As the library's encode_spans: the request, as an object to serialize."""
        return _Encoded(self.encode(spans))

    def _envelope(self, resource: Any, scope: Any) -> tuple[bytes, bytes, bytes, bytes]:
        """What ResourceSpans holds around its ScopeSpans, and ScopeSpans around its spans,
        taken from the library's encoding of a span with this resource and scope."""
        key = (resource, scope)
        known = self._envelopes.get(key)
        if known is None:
            resource_spans = self._library([_probe(resource, scope)]).resource_spans[0]
            scope_spans = resource_spans.scope_spans[0]
            known = (
                _field(1, resource_spans.resource.SerializePartialToString())
                if resource_spans.HasField("resource")
                else b"",
                _text(3, resource_spans.schema_url),
                _field(1, scope_spans.scope.SerializePartialToString())
                if scope_spans.HasField("scope")
                else b"",
                _text(3, scope_spans.schema_url),
            )
            if len(self._envelopes) >= _CACHE_LIMIT:
                self._envelopes.clear()
            self._envelopes[key] = known
        return known

    def _fallback(self, span: Any) -> bytes:
        """The library's bytes of one span."""
        message = self._library([span]).resource_spans[0].scope_spans[0].spans[0]
        encoded: bytes = message.SerializePartialToString()
        return encoded

    def span(self, span: Any) -> bytes:
        """One Span message's bytes."""
        if (
            span.events
            or span.links
            or span.dropped_attributes
            or span.dropped_events
            or span.dropped_links
            or span.status is None
            or not span.start_time
            or not span.end_time
        ):
            return self._fallback(span)
        attributes = self._encoded_attributes(span.attributes)
        if attributes is None:
            return self._fallback(span)
        context = span.context
        parent = span.parent
        state = context.trace_state
        status = span.status
        head_key = (span.name, span.kind)
        head = self._heads.get(head_key)
        if head is None:  # the name (5) and kind (6)
            head = _text(5, span.name) + b"\x30" + _varint(_SPAN_KIND[span.kind.name])
            self._heads[head_key] = self._bounded(self._heads, head)
        remote = parent is not None and parent.is_remote
        tail_key = (status.status_code, status.description, remote)
        tail = self._tails.get(tail_key)
        if tail is None:  # the status (15: message 2, code 3) and the flags (16)
            code = status.status_code.value
            tail = _field(
                15, _text(2, status.description) + (b"\x18" + _varint(code) if code else b"")
            )
            tail += b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | (_IS_REMOTE if remote else 0))
            self._tails[tail_key] = self._bounded(self._tails, tail)
        return b"".join(
            (
                b"\x0a\x10",
                context.trace_id.to_bytes(16, "big"),
                b"\x12\x08",
                context.span_id.to_bytes(8, "big"),
                _text(3, ",".join(f"{k}={v}" for k, v in state.items())) if state else b"",
                b"\x22\x08" + parent.span_id.to_bytes(8, "big") if parent is not None else b"",
                head,
                _TIMES(0x39, span.start_time, 0x41, span.end_time),
                attributes,
                tail,
            )
        )

    @staticmethod
    def _bounded(cache: dict[Any, bytes], value: bytes) -> bytes:
        """`value`, after emptying `cache` if it is full (its keys come from the spans)."""
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        return value

    def _encoded_attributes(self, attributes: Any) -> bytes | None:
        parts = []
        cache = self._attributes
        for key, value in (attributes or {}).items():
            if isinstance(value, float):  # not kept: -0.0 == 0.0 and NaN != NaN
                any_value = _any_value(value)
                assert any_value is not None
                parts.append(_field(9, _text(1, key) + _field(2, any_value)))
                continue
            cache_key = (key, type(value), value)
            try:
                encoded = cache[cache_key]
            except KeyError:
                any_value = _any_value(value)
                encoded = (
                    None if any_value is None else _field(9, _text(1, key) + _field(2, any_value))
                )
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[cache_key] = encoded
            except TypeError:  # an unhashable value (a list): the library's
                return None
            if encoded is None:
                return None
            parts.append(encoded)
        return b"".join(parts)


def _probe(resource: Any, scope: Any) -> Any:
    """A span with nothing but a resource and a scope: what the library is asked to
    encode to learn how it writes them."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext

    return ReadableSpan(
        name="probe",
        context=SpanContext(1, 1, is_remote=False),
        resource=resource,
        instrumentation_scope=scope,
        start_time=1,
        end_time=1,
    )


class _Encoded:
    """A request already encoded, in the shape the exporter expects of the library's."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializePartialToString(self) -> bytes:  # protobuf's name
        return self.data

    SerializeToString = SerializePartialToString


def install() -> bool:
    """Makes the OTLP/HTTP span exporter encode with SpanEncoder; False (and nothing
    changed) if that exporter no longer encodes through the library function this
    replaces - spans then go out as the library encodes them."""
    from opentelemetry.exporter.otlp.proto.common import trace_encoder
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    current = getattr(trace_exporter, "encode_spans", None)
    if isinstance(getattr(current, "__self__", None), SpanEncoder):
        return True
    if current is not trace_encoder.encode_spans:
        return False
    setattr(trace_exporter, "encode_spans", SpanEncoder(current).encode_request)  # noqa: B010
    return True
