"""Waiting in a test for a positive signal instead of sleeping a fixed time: `eventually` (in a
coroutine) and `eventually_sync` ask a condition until it holds, and fail saying what never came."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

# How often the condition is asked again: a poll is the safety net where the test has no event to await.
POLL = 0.05


def _failure(message: Callable[[], object] | str) -> AssertionError:
    return AssertionError(message() if callable(message) else message)


@overload
async def eventually(
    condition: Callable[[], Awaitable[T | None]], timeout: float = ..., message: Callable[[], object] | str = ...
) -> T: ...
@overload
async def eventually(
    condition: Callable[[], T | None], timeout: float = ..., message: Callable[[], object] | str = ...
) -> T: ...
async def eventually(
    condition: Callable[[], object], timeout: float = 10, message: Callable[[], object] | str = "timed out waiting"
) -> object:
    """The condition's first truthy value (awaited, if it is a coroutine function's), once it has one;
    an AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(message)
        await asyncio.sleep(POLL)


def eventually_sync(
    condition: Callable[[], T | None], timeout: float = 10, message: Callable[[], object] | str = "timed out waiting"
) -> T:
    """`eventually` for a test without an event loop."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise _failure(message)
        time.sleep(POLL)
    return value
