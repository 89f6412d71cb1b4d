"""Single-flight: identical requests in flight at the same moment share one upstream call.

A `Flight` runs the upstream work in a task of its own, so no single client owns it: when the client
that started it goes away, the call goes on for the others. What the work produces is broadcast:
for a stream, every chunk is appended to a buffer and wakes the subscribers, so a late arrival first
receives the chunks already sent and then the rest live; for a complete answer, every subscriber
gets the same result. An error reaches everyone the same way. When the last subscriber leaves
before the work is done, the task is cancelled, which closes the upstream connection at once (a
client that disconnects still cancels its upstream request, unless someone else needs it). Either
way the work's record ends up holding what the call consumed (a cancelled stream settles what it
relayed before the flight is marked done), and `when_done` lets the subscriber who pays for the
call (the leader, gateway/pipeline/reuse.py) settle after it has left.

Wake-ups use an `asyncio.Event` replaced on every change: a subscriber checks the state and takes
the current event without yielding in between, so it cannot miss a change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from gateway.errors import GatewayError
from gateway.pipeline.record import Record
from gateway.sse import frame

log = logging.getLogger("gateway.cache")

T = TypeVar("T")


class Flight(Generic[T]):
    def __init__(self, record: Record, on_close: Callable[[Flight[T]], None]) -> None:
        self.record = record  # the work's own record: every subscriber copies what it learned
        self.chunks: list[bytes] = []
        self.result: T | None = None
        self.error: GatewayError | None = None
        self.done = False
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._on_close = on_close
        self._when_done: list[Callable[[], None]] = []

    # the work's side -------------------------------------------------------------------------
    def publish(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self._wake()

    def finish(self, result: T | None = None) -> None:
        self.result = result
        self.done = True
        self._wake()
        callbacks, self._when_done = self._when_done, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one subscriber's bookkeeping must not break the flight for the others
                log.exception("a shared call's completion callback failed")

    def when_done(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the work is over (at once if it is): its record then holds the final usage."""
        if self.done:
            callback()
        else:
            self._when_done.append(callback)

    def fail(self, error: GatewayError) -> None:
        self.error = error
        self.finish()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # the subscribers' side -------------------------------------------------------------------
    def join(self) -> None:
        self.subscribers += 1

    def leave(self) -> None:
        self.subscribers -= 1
        if self.subscribers == 0 and not self.done and self.task is not None:
            self._on_close(self)
            self.task.cancel()

    async def outcome(self) -> T:
        """The complete result, once the work is done (raises its error)."""
        while not self.done:
            await self._changed.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    async def first(self) -> None:
        """Wait for the first chunk; raise the error if the work failed before producing one."""
        while not self.chunks and not self.done:
            await self._changed.wait()
        if not self.chunks:
            raise self.error or GatewayError("The shared upstream call ended without an answer.")

    async def follow(self) -> AsyncGenerator[bytes, None]:
        """Every chunk from the first, live until the work is done."""
        sent = 0
        while True:
            while sent < len(self.chunks):
                sent += 1
                yield self.chunks[sent - 1]
            if self.done:
                break
            await self._changed.wait()
        if self.error is not None:  # failed after the first chunk without saying so in the stream
            yield frame(self.error.json(), "error")


class Flights(Generic[T]):
    """The flights in progress, by identity (scope, key and reply shape)."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, ident: Hashable) -> Flight[T] | None:
        return self._flights.get(ident)

    def start(self, ident: Hashable, record: Record, work: Callable[[Flight[T]], Awaitable[None]]) -> Flight[T]:
        flight: Flight[T] = Flight(record, lambda f: self._remove(ident, f))
        self._flights[ident] = flight
        flight.task = asyncio.create_task(self._run(ident, flight, work))
        return flight

    async def _run(self, ident: Hashable, flight: Flight[T], work: Callable[[Flight[T]], Awaitable[None]]) -> None:
        try:
            await work(flight)
        except GatewayError as exc:
            flight.fail(exc)
        except Exception as exc:
            log.exception("shared upstream call failed", exc_info=exc)
            flight.fail(GatewayError("The gateway hit an internal error.", code="internal_error"))
        finally:
            if not flight.done:  # cancelled: nobody is listening any more
                flight.fail(GatewayError("The shared upstream call was cancelled.", code="cancelled"))
            self._remove(ident, flight)

    def _remove(self, ident: Hashable, flight: Flight[T]) -> None:
        if self._flights.get(ident) is flight:
            del self._flights[ident]
