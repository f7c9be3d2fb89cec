"""VzError -> gRPC status, with the error kind in trailing metadata ("vz-error")."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from agent.errors import Kind, VzError

log = logging.getLogger(__name__)

CODES: dict[Kind, grpc.StatusCode] = {
    Kind.FAILED: grpc.StatusCode.INTERNAL,
    Kind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Kind.STATE: grpc.StatusCode.FAILED_PRECONDITION,
    Kind.BUSY: grpc.StatusCode.ABORTED,
    Kind.TEMPLATE: grpc.StatusCode.NOT_FOUND,
    Kind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}

R = TypeVar("R")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    if isinstance(exc, VzError):
        kind, msg = exc.kind, exc.message
    else:
        log.exception("internal error")
        kind, msg = Kind.FAILED, f"internal error in the agent: {type(exc).__name__}: {exc} (see the agent log)"
    context.set_trailing_metadata((("vz-error", kind.value),))
    await context.abort(CODES[kind], msg)


def unary(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await _abort(context, e)
            raise AssertionError("unreachable") from e
    return wrapper


def streaming(fn: Callable[..., AsyncIterator[R]]) -> Callable[..., AsyncIterator[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[R]:
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await _abort(context, e)
    return wrapper
