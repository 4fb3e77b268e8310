"""InterceptorChain (grpc/interceptor_base.py) runs our interceptors as grpc.aio would.

Stages that record what they are asked, around a continuation that counts its
lookups: the `before`s outermost first, the first refusal ending the descent (the
handler is then not looked up, the stages inside do not run), then the `after`s of
the stages entered, innermost first. The same stages given to grpc.aio one by one
(each one's own intercept_service, chained as grpc.aio chains them) give the same
handler and the same log: the chain changes the cost, not the result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from blobstore.grpc.interceptor_base import GatedInterceptor, InterceptorChain

GATED = "/blobstore.v1.BlobService/Get"
OTHER = "/grpc.health.v1.Health/Check"


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.method = method
        self.invocation_metadata = metadata


class _Wrapping(GatedInterceptor[str]):
    """A stage that wraps gated handlers: the handler becomes ("name", inner)."""

    keyed_on_handler = False

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def build(self, service: Any, name: str, handler: Any) -> str:
        return name

    def intercept(self, method: str, handler: Any, details: grpc.HandlerCallDetails) -> Any:
        self.log.append(f"after {self.name}")
        return (self.name, handler)


class _Refusing(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """A stage that decides before the lookup, as the authenticator: refuses a call
    whose metadata says `refuse`."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def before(self, details: Any) -> Any:
        self.log.append("before refusing")
        return "refusal" if ("refuse", "yes") in details.invocation_metadata else None

    def after(self, handler: Any, details: Any) -> Any:
        return handler

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        refused = self.before(handler_call_details)
        return refused if refused is not None else await continuation(handler_call_details)


def _stages(log: list[str]) -> list[Any]:
    return [_Wrapping("outer", log), _Refusing(log), _Wrapping("inner", log)]


async def _one_by_one(stages: list[Any], continuation: Any, details: Any) -> Any:
    """As grpc.aio runs a list of interceptors (its _run_interceptor)."""

    async def run(index: int, call_details: Any) -> Any:
        if index == len(stages):
            return await continuation(call_details)
        return await stages[index].intercept_service(lambda d: run(index + 1, d), call_details)

    return await run(0, details)


@pytest.mark.parametrize(
    ("method", "metadata", "handler", "log"),
    [
        (
            GATED,
            (),
            ("outer", ("inner", "looked up")),
            ["before refusing", "lookup", "after inner", "after outer"],
        ),
        (GATED, (("refuse", "yes"),), ("outer", "refusal"), ["before refusing", "after outer"]),
        (OTHER, (), "looked up", ["before refusing", "lookup"]),  # not gated: untouched
    ],
)
async def test_the_chain_gives_what_grpc_aio_would(
    method: str, metadata: tuple[tuple[str, str], ...], handler: Any, log: list[str]
) -> None:
    results = []
    for way in ("chain", "one by one"):
        seen: list[str] = []

        async def continuation(details: Any, seen: list[str] = seen) -> Any:
            seen.append("lookup")
            return "looked up"

        stages = _stages(seen)
        details = _Details(method, metadata)
        if way == "chain":
            got = await InterceptorChain(stages).intercept_service(continuation, details)
        else:
            got = await _one_by_one(stages, continuation, details)
        results.append((got, seen))
    assert results[0] == results[1] == (handler, log)


async def test_an_unknown_method_stays_unknown() -> None:
    seen: list[str] = []

    async def nothing(details: Any) -> Any:
        return None  # grpc answers UNIMPLEMENTED

    chain = InterceptorChain(_stages(seen))
    assert await chain.intercept_service(nothing, _Details(GATED)) is None
    assert seen == ["before refusing"]
