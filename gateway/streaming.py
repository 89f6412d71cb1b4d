"""Our own ASGI responses: SSE with disconnect watching and keep-alives, and JSON with headers encoded once.

Starlette's StreamingResponse runs the body and a disconnect listener in an anyio task group: three
tasks and a cancel scope per stream, a measurable share of a relayed stream's cost. Here the body is
sent from the request's own task and one small watcher task awaits `http.disconnect`; when the
client goes, the watcher cancels the sending task, so the body generator is interrupted wherever it
waits (typically on the upstream) and its `finally` closes the upstream connection at once. While
the body is silent for `keepalive_s`, the watcher sends an SSE comment so that proxies and clients
on the way do not time the stream out. A client that stops reading is cut off by the server
(gateway/server.py, `stream_stall_timeout_s`), which marks the scope; the watcher then tells
`on_stalled` before interrupting the body, so its trace says `client_stalled`.

The first chunk is taken from the body before anything is sent, so the body generator has always
started, and its cleanup always runs, whatever happens to the connection afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.sse import KEEPALIVE

STALLED = "gateway.client_stalled"  # set in the ASGI scope by the server when it cuts off a client that stopped reading


class SSEResponse(Response):
    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        headers: dict[str, str],
        keepalive_s: float = 15.0,
        status: int = 200,
        on_stalled: Callable[[], None] | None = None,
    ) -> None:
        self._body = body
        self._status = status
        self._keepalive_s = keepalive_s
        self._on_stalled = on_stalled  # told, before the body is interrupted, that the client was cut off for not reading
        raw = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        self._raw_headers = raw + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        gone = False
        last_sent = loop.time()

        async def watch() -> None:
            nonlocal gone, last_sent
            while True:
                try:
                    async with asyncio.timeout(self._keepalive_s):
                        message = await receive()
                except TimeoutError:
                    if loop.time() - last_sent >= self._keepalive_s:
                        last_sent = loop.time()
                        await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                    continue
                if message["type"] == "http.disconnect":
                    gone = True
                    if self._on_stalled is not None and scope.get(STALLED):
                        self._on_stalled()
                    task.cancel()
                    return

        watcher: asyncio.Task[None] | None = None
        try:
            first = await anext(self._body)
            await send({"type": "http.response.start", "status": self._status, "headers": self._raw_headers})
            await send({"type": "http.response.body", "body": first, "more_body": True})
            watcher = asyncio.create_task(watch())
            async for chunk in self._body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                last_sent = loop.time()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise  # cancelled by the server, not by the client leaving
            task.uncancel()
        finally:
            if watcher is not None:
                watcher.cancel()
            await self._body.aclose()


class JSONAnswer(Response):
    """A JSON reply with its headers encoded in one pass (Starlette's Response.__init__ normalises
    and re-encodes them, a measurable share of a cache hit)."""

    def __init__(self, content: bytes, headers: dict[str, str]) -> None:
        self.status_code = 200
        self.body = content
        self.background = None
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
        self.raw_headers = raw + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
