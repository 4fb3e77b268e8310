"""What the blob services' interceptors share: which calls they gate, and handler plumbing.

The tracer (grpc/tracing.py), the observer (grpc/metrics.py), the authenticator and
certificate gate (grpc/auth.py) and the guard (grpc/guard.py) each act on the calls of
blobstore.v1.BlobService and stepflow.v1.BlobService only (health and reflection pass
untouched). They share:

* `GATED_SERVICES` / `gated(path)`: the one list of gated services, and the split of a
  method path into its service descriptor and method name;
* `GatedInterceptor`: the intercept_service preamble - take the handler from the
  continuation, let other calls through, find the method's state (built once per
  method by `build`, rebuilt only if the handler under it changes) - then `intercept`;
* `behavior_slot`, `metadata_value`: the handler field that holds a call's behaviour,
  and one metadata value;
* `MadeOnce`: a stage's handler made once per method, not per call (see its docstring);
* `InterceptorChain`: the interceptors given to grpc.aio as one (see its docstring).

Everything here runs for every call, so it stays plain code: a dict lookup and an
identity check per call, no context managers or extra coroutine layers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

import grpc

from blobstore.api.stepflow.v1 import blobs_pb2 as stepflow_pb
from blobstore.proto_names import SERVICE

Handler = Any  # grpc's RpcMethodHandler named tuple; grpc-stubs does not type its fields
Context = grpc.aio.ServicerContext[Any, Any]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
M = TypeVar("M")

# The gated services by full name; a method path is "/<full name>/<method>".
GATED_SERVICES: dict[str, Any] = {
    service.full_name: service
    for service in (SERVICE, stepflow_pb.DESCRIPTOR.services_by_name["BlobService"])
}
SLOTS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def gated(path: str) -> tuple[Any, str] | None:
    """(service descriptor, method name) of a gated method's path, else None."""
    service, _, name = path[1:].rpartition("/")
    descriptor = GATED_SERVICES.get(service)
    return None if descriptor is None else (descriptor, name)


def behavior_slot(handler: Handler) -> str:
    """The name of the handler field that holds its behaviour (`unary_unary`...)."""
    for slot in SLOTS:
        if getattr(handler, slot) is not None:
            return slot
    raise ValueError("a method handler without a behaviour")


def metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    """The first value of `key` (text; a binary value read as latin-1), or None."""
    for name, value in metadata or ():
        if name == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


class GatedInterceptor(grpc.aio.ServerInterceptor, Generic[M]):  # type: ignore[type-arg]
    """An interceptor that wraps the handlers of gated methods, with per-method state M.

    `keyed_on_handler`: rebuild the state when the handler from the continuation is
    not the one it was built from (the state holds that handler); otherwise the state
    depends on the method alone (a handler may then differ from call to call).
    """

    keyed_on_handler = True

    def __init__(self) -> None:
        self._methods: dict[str, tuple[Handler, M]] = {}

    def build(self, service: Any, name: str, handler: Handler) -> M:
        """The state of one method, built at its first call."""
        raise NotImplementedError

    def intercept(self, method: M, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        """This call's handler."""
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        return self.after(await continuation(handler_call_details), handler_call_details)

    def before(self, details: grpc.HandlerCallDetails) -> Handler:
        """Decides nothing before the handler is looked up (see InterceptorChain)."""
        return None

    def after(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        """The handler to run for the call, given the one the inner interceptors gave."""
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
            return None
        path: str = details.method
        known = self._methods.get(path)
        if known is None or (self.keyed_on_handler and known[0] is not handler):
            hit = gated(path)
            if hit is None:
                return handler
            known = self._methods[path] = (handler, self.build(hit[0], hit[1], handler))
        return self.intercept(known[1], handler, details)


class MadeOnce:
    """The handler a stage made from the one it was last given for a method.

    The guard gives every admitted call of a method the same handler (what differs per
    call - its admission ticket, request id, trace parent - travels in context
    variables, which grpc.aio's interceptors and behaviours share: they run in the
    call's task), so a stage in front of it makes its own handler once, not per call.
    A refusal is another handler, made per call: it is wrapped as it comes, and the
    method's handler again at the next admitted call.
    """

    __slots__ = ("_given", "_made")

    def __init__(self) -> None:
        self._given: Handler = None
        self._made: Handler = None

    def get(self, handler: Handler, make: Callable[[Handler], Handler]) -> Handler:
        if handler is not self._given:
            self._made = make(handler)
            self._given = handler
        return self._made


class Stage(Protocol):
    """An interceptor as InterceptorChain runs it: a decision before the handler is looked
    up (a handler that refuses the call, or None to go on), and a change of the handler
    after (each of ours is plain code: neither needs to await)."""

    def before(self, details: grpc.HandlerCallDetails) -> Handler: ...

    def after(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler: ...


class InterceptorChain(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Our interceptors, given to grpc.aio as one: the same result as listing them.

    Why: grpc.aio runs each interceptor it is given as two coroutines and a partial per
    call (its _run_interceptor and the interceptor's intercept_service), and that, not
    what the interceptors do, was most of what metrics cost a small call
    (docs/performance.md, "What observing a call costs"). The chain runs the same stages
    as plain calls under one intercept_service, in the order grpc.aio would: each
    stage's `before` outermost first - the first to return a handler refuses the call,
    the handler is then not looked up and the stages inside it do not run - then the
    handler from the continuation (or the refusal) goes out through the `after` of each
    stage that was entered, innermost first.
    """

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = tuple(stages)
        # Only the stages that decide anything before the lookup are asked (the
        # authenticator); for the others `before` is always None.
        self._deciders = tuple(
            (depth, stage)
            for depth, stage in enumerate(self.stages)
            if type(stage).before is not GatedInterceptor.before
        )

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        stages = self.stages
        depth = len(stages)
        handler = None
        for at, stage in self._deciders:
            handler = stage.before(handler_call_details)
            if handler is not None:
                depth = at
                break
        if handler is None:
            handler = await continuation(handler_call_details)
        while depth:
            depth -= 1
            handler = stages[depth].after(handler, handler_call_details)
        return handler
