"""A fake OpenAI-compatible provider: a real HTTP server on a real loopback socket.

`FakeOpenAI` runs an aiohttp.web server in a background thread with its own event loop and speaks
OpenAI's wire format (JSON bodies, SSE streams, error objects). Nothing is mocked: the code under
test connects to `fake.base_url` over TCP exactly as it would to api.openai.com.

    fake = FakeOpenAI().start()          # or: with FakeOpenAI() as fake: ...
    fake.script(Behavior(status=429, headers={"retry-after": "1"}), Behavior(chunks=8))
    ...                                  # point the client at fake.base_url
    fake.requests[0].json["model"]       # what the fake received
    fake.stop()

Endpoints: POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings, GET /v1/models,
GET /v1/models/{id}. Anything else answers 404 with an OpenAI-shaped error.

Answers are deterministic:
- chat: "echo: " + the text of the last user message (list content: the text parts joined by " ").
  If the request has `tools` and that message contains CALL_TOOL, the answer is a call of the
  first tool with arguments '{"q": "x"}' and finish_reason "tool_calls".
- legacy completions: "echo: " + prompt (one choice per prompt when `prompt` is a list).
- embeddings: `expected_embedding(input)` for each input (8 floats unless `dimensions` is given),
  as JSON floats or, with encoding_format "base64", little-endian float32 in base64. An input
  containing REJECT_INPUT is refused with a 400 quoting it; `fake.embeddings_delay_s` delays every
  embeddings answer, `fake.embedding_tokens` (a function of one text) counts its usage tokens.
- token counts are whitespace-separated words: prompt = words of all message texts, completion =
  words of the answer text (or of the tool arguments); identical for stream and non-stream.

Every request pops the next scripted `Behavior` (FIFO; `Behavior()` when the queue is empty), in
the order the requests arrive, whatever their path. The knobs, applied in this order:
- delay_s: sleep before sending the response headers (slow first byte).
- body: send these raw bytes with `status` instead of the normal answer. content-type defaults to
  text/event-stream for a streaming request with status < 400, else application/json.
- status >= 400 (without body): an OpenAI error object `{"error": {message, type, param, code}}`.
- headers: extra response headers, on every kind of answer (override the defaults).
- usage=False: no "usage" in the answer, and no usage chunk in a stream.
Streaming only (request `"stream": true`):
- chunks: number of content chunks the text (or tool arguments) is split into.
- chunk_delay_s: sleep before every event but the first.
- split_events: each event is written in many TCP writes of 1-8 bytes with ~1 ms between them; the
  final "\\n" of each event is always its own write.
- break_after=N: after N events (the role chunk is event 0), close the TCP connection: no
  terminating chunk of the chunked body, no [DONE].
- stall_after=N: after N events, send nothing more; wait until the client goes away.
- garbage_after=N: after N events, send `data: {not json\\n\\n` and end the body cleanly.
- text: chat only: answer this text instead of the echo (e.g. megabytes, for a client that stops reading).
A stream is: role chunk, `chunks` content chunks, finish chunk, usage chunk (only when the request
has stream_options.include_usage=true and usage is on; then every other chunk has "usage": null),
`data: [DONE]`. Legacy completion streams have no role chunk.

Client disconnects: whenever a response (streaming, or waiting out delay_s) notices that the
client has gone, the time.monotonic() of that moment is appended to `disconnects`.
`wait_for_disconnect` returns them one by one. `connections_open` counts the TCP connections the
fake currently has open.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import EllipsisType, TracebackType
from typing import Any, Self

from aiohttp import web
from multidict import CIMultiDict

__all__ = [
    "DEFAULT_MODELS",
    "Behavior",
    "FakeOpenAI",
    "RecordedRequest",
    "error_payload",
    "expected_embedding",
]

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
)
EMBEDDING_DIMENSIONS = 8
TOOL_ARGUMENTS = '{"q": "x"}'
GARBAGE_EVENT = b"data: {not json\n\n"
DONE_EVENT = b"data: [DONE]\n\n"
# an embeddings input containing this is refused with a 400 whose message quotes the input, as a
# provider may do (the batching tests check that no other request ever sees it)
REJECT_INPUT = "REJECT-THIS-INPUT"

_SPLIT_SIZES = (2, 7, 1, 8, 2, 8, 1, 8)
_SPLIT_PAUSE_S = 0.001
_POLL_S = 0.005

# status -> (type, code, message), as OpenAI sends them
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request (scripted by the fake)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", None, "You are not allowed to make this request."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", None, "Conflict."),
    413: ("invalid_request_error", None, "Request too large."),
    422: ("invalid_request_error", None, "Unprocessable request."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: (
        "server_error",
        None,
        "The engine is currently overloaded, please try again later.",
    ),
    504: ("server_error", None, "Gateway timeout."),
}


@dataclass
class Behavior:
    """One scripted answer; fields left at their defaults give the normal behaviour."""

    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    chunks: int = 4
    chunk_delay_s: float = 0.0
    split_events: bool = False
    break_after: int | None = None
    stall_after: int | None = None
    garbage_after: int | None = None
    usage: bool = True
    text: str | None = None


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    json: Any  # parsed body, or None when the body is empty or not JSON
    body: bytes
    query: dict[str, str] = field(default_factory=dict)
    client_port: int | None = None  # the client's TCP port: same port = same connection


class _ClientGone(Exception):
    """The client closed the connection while we were answering."""


def expected_embedding(text: str | Sequence[int], dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The vector the fake returns for one embeddings input (a string or a list of token ids).

    Values are k/32768 - 1 for 16-bit k, so they are exact in float32 and survive base64.
    """
    key = text if isinstance(text, str) else " ".join(str(t) for t in text)
    out: list[float] = []
    for block in itertools.count():
        digest = hashlib.sha256(f"{block}:{key}".encode()).digest()
        for i in range(0, len(digest), 2):
            if len(out) == dimensions:
                return out
            out.append(int.from_bytes(digest[i : i + 2], "little") / 32768.0 - 1.0)
    raise AssertionError("unreachable")


def error_payload(
    status: int,
    message: str | None = None,
    *,
    type_: str | None = None,
    code: str | EllipsisType | None = ...,
    param: str | None = None,
) -> dict[str, Any]:
    """The OpenAI error object the fake sends for `status` (defaults per status; `code=None`
    forces a null code)."""
    default_type, default_code, default_message = _ERRORS.get(
        status,
        ("server_error", None, "Server error.") if status >= 500 else ("invalid_request_error", None, "Invalid request."),
    )
    return {
        "error": {
            "message": message if message is not None else default_message,
            "type": type_ if type_ is not None else default_type,
            "param": param,
            "code": default_code if code is ... else code,
        }
    }


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _event(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


def _words(text: str) -> int:
    return len(text.split())


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text")
    return ""


def _split(text: str, parts: int) -> list[str]:
    """`parts` roughly equal pieces (some empty if the text is short) that join to `text`."""
    parts = max(parts, 1)
    n = len(text)
    return [text[i * n // parts : (i + 1) * n // parts] for i in range(parts)]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class FakeOpenAI:
    """A fake OpenAI provider on 127.0.0.1 (see the module docstring for the knobs)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        models: Sequence[str] = DEFAULT_MODELS,
    ) -> None:
        self.host = host
        self.port = port
        self.models: list[str] = list(models)
        self._lock = threading.Lock()
        self._disconnected = threading.Condition(self._lock)
        self._queue: deque[Behavior] = deque()
        self._requests: list[RecordedRequest] = []
        self._disconnects: list[float] = []
        self._disconnects_returned = 0
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._startup_error: Exception | None = None
        self._stopping = False

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Start the server thread; returns once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("FakeOpenAI already started")
        self._ready.clear()
        self._startup_error = None
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("FakeOpenAI did not start within 10 s")
        if self._startup_error is not None:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError("FakeOpenAI failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Stop the server (open connections are closed) and join its thread. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._stopping = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(15)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(15)
            self._thread = None
            self._loop = None
            self._runner = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._startup())
        except Exception as exc:  # re-raised by start()
            self._startup_error = exc
            self._loop = None
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ---------------------------------------------------------------- test-side API

    base_path = "/v1"  # what a client appends to the host; provider fakes without a version prefix set ""

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.base_path}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def disconnects(self) -> list[float]:
        """A snapshot of the monotonic times at which a response noticed its client had gone."""
        with self._lock:
            return list(self._disconnects)

    @property
    def pending(self) -> int:
        """Scripted behaviours not yet consumed."""
        with self._lock:
            return len(self._queue)

    def script(self, *behaviors: Behavior) -> None:
        """Queue one-shot behaviours for the next requests (FIFO)."""
        with self._lock:
            self._queue.extend(behaviors)

    def reset(self) -> None:
        """Forget scripted behaviours, recorded requests and disconnects."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._disconnects.clear()
            self._disconnects_returned = 0

    def wait_for_disconnect(self, timeout: float) -> float | None:
        """Block until a disconnect not yet returned by an earlier call is recorded; return its
        time.monotonic(), or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._disconnected:
            while len(self._disconnects) <= self._disconnects_returned:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._disconnected.wait(remaining)
            when = self._disconnects[self._disconnects_returned]
            self._disconnects_returned += 1
            return when

    async def wait_for_disconnect_async(self, timeout: float) -> float | None:  # noqa: ASYNC109
        """`wait_for_disconnect` for async tests: does not block the caller's event loop (which
        may be running the code that has to disconnect)."""
        return await asyncio.to_thread(self.wait_for_disconnect, timeout)

    @property
    def connections_open(self) -> int:
        """TCP connections to the fake that are currently open."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return 0
        if threading.current_thread() is self._thread:
            return self._count_connections()

        async def count() -> int:
            return self._count_connections()

        return asyncio.run_coroutine_threadsafe(count(), loop).result(5)

    def wait_for_connections(self, expected: int, timeout: float) -> bool:
        """Poll until `connections_open == expected`; False if it never happened in `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if self.connections_open == expected:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    async def wait_for_connections_async(self, expected: int, timeout: float) -> bool:  # noqa: ASYNC109
        """`wait_for_connections` for async tests (does not block the caller's event loop)."""
        return await asyncio.to_thread(self.wait_for_connections, expected, timeout)

    def _count_connections(self) -> int:
        server = self._runner.server if self._runner is not None else None
        if server is None:
            return 0
        return sum(1 for handler in server.connections if handler.transport is not None)

    def _record_disconnect(self) -> None:
        with self._disconnected:
            self._disconnects.append(time.monotonic())
            self._disconnected.notify_all()

    # ---------------------------------------------------------------- server side

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        peer = request.transport.get_extra_info("peername") if request.transport else None
        with self._lock:
            behavior = self._queue.popleft() if self._queue else Behavior()
            n = next(self._ids)
            self._requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    headers=_lower_headers(request),
                    json=parsed,
                    body=body,
                    query=dict(request.query),
                    client_port=int(peer[1]) if isinstance(peer, tuple) else None,
                )
            )
        try:
            if behavior.delay_s > 0:
                await self._pause(request, behavior.delay_s)
            return await self._respond(request, parsed, body, behavior, n)
        except _ClientGone:
            self._record_disconnect()
            # never reaches anyone: the connection is gone
            return web.Response(status=499)

    async def _respond(self, request: web.Request, parsed: Any, raw: bytes, behavior: Behavior, n: int) -> web.StreamResponse:
        stream = isinstance(parsed, dict) and parsed.get("stream") is True
        if behavior.body is not None:
            ctype = "text/event-stream" if stream and behavior.status < 400 else "application/json"
            return self._reply(n, behavior, behavior.body, ctype)
        if behavior.status >= 400:
            return self._error(n, behavior, behavior.status)
        route = (request.method, request.path)
        if route == ("GET", "/v1/models"):
            data = [self._model_object(m) for m in self.models]
            return self._json(n, behavior, {"object": "list", "data": data})
        if request.method == "GET" and request.path.startswith("/v1/models/"):
            model = request.path.removeprefix("/v1/models/")
            if model not in self.models:
                return self._error(
                    n,
                    behavior,
                    404,
                    f"The model `{model}` does not exist or you do not have access to it.",
                )
            return self._json(n, behavior, self._model_object(model))
        if request.method != "POST" or request.path not in (
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
        ):
            return self._error(
                n,
                behavior,
                404,
                f"Invalid URL ({request.method} {request.path})",
                code=None,
            )
        if not isinstance(parsed, dict):
            return self._error(
                n,
                behavior,
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                f"but what was sent was not valid JSON.) Body length: {len(raw)}",
            )
        if not isinstance(parsed.get("model"), str):
            return self._error(n, behavior, 400, "you must provide a model parameter")
        if request.path == "/v1/chat/completions":
            return await self._chat(request, parsed, behavior, n, stream)
        if request.path == "/v1/completions":
            return await self._completion(request, parsed, behavior, n, stream)
        if self.embeddings_delay_s > 0:
            await self._pause(request, self.embeddings_delay_s)
        return self._embeddings(parsed, behavior, n)

    # ---- endpoints

    async def _chat(
        self,
        request: web.Request,
        req: dict[str, Any],
        behavior: Behavior,
        n: int,
        stream: bool,
    ) -> web.StreamResponse:
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(
                n,
                behavior,
                400,
                "Missing required parameter: 'messages'.",
                param="messages",
            )
        prompt_tokens = sum(_words(_content_text(m.get("content"))) for m in messages if isinstance(m, dict))
        last_user = next(
            (_content_text(m.get("content")) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"),
            "",
        )
        tools = req.get("tools")
        tool_name: str | None = None
        if isinstance(tools, list) and tools and "CALL_TOOL" in last_user:
            tool_name = str(tools[0].get("function", {}).get("name", "tool"))
        text = TOOL_ARGUMENTS if tool_name is not None else behavior.text if behavior.text is not None else "echo: " + last_user
        usage = _usage(prompt_tokens, _words(text))
        cid = f"chatcmpl-fake-{n}"
        created = int(time.time())
        model = req["model"]
        tool_call = {
            "id": "call_fake_1",
            "type": "function",
            "function": {"name": tool_name, "arguments": TOOL_ARGUMENTS},
        }
        if not stream:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": text,
                "refusal": None,
            }
            if tool_name is not None:
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [tool_call],
                    "refusal": None,
                }
            answer: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "tool_calls" if tool_name else "stop",
                    }
                ],
            }
            if behavior.usage:
                answer["usage"] = usage
            return self._json(n, behavior, answer)

        with_usage = _include_usage(req) and behavior.usage
        head = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
            obj: dict[str, Any] = {**head, "choices": [choice]}
            if with_usage:
                obj["usage"] = None
            return _event(obj)

        pieces = _split(text, behavior.chunks)
        if tool_name is None:
            events = [chunk({"role": "assistant", "content": ""})]
            events += [chunk({"content": piece}) for piece in pieces]
            events.append(chunk({}, "stop"))
        else:
            first = {
                "index": 0,
                "id": tool_call["id"],
                "type": "function",
                "function": {"name": tool_name, "arguments": ""},
            }
            events = [
                chunk(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [first],
                        "refusal": None,
                    }
                )
            ]
            events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}) for piece in pieces]
            events.append(chunk({}, "tool_calls"))
        if with_usage:
            events.append(_event({**head, "choices": [], "usage": usage}))
        events.append(DONE_EVENT)
        return await self._stream(request, n, behavior, events)

    async def _completion(
        self,
        request: web.Request,
        req: dict[str, Any],
        behavior: Behavior,
        n: int,
        stream: bool,
    ) -> web.StreamResponse:
        prompt = req.get("prompt", "")
        prompts: list[str]
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            prompts = [" ".join(str(p) for p in prompt)]
        elif isinstance(prompt, list) and prompt:
            prompts = [p if isinstance(p, str) else " ".join(str(t) for t in p) for p in prompt]
        else:
            prompts = [""]
        texts = ["echo: " + p for p in prompts]
        usage = _usage(sum(_words(p) for p in prompts), sum(_words(t) for t in texts))
        head = {
            "id": f"cmpl-fake-{n}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": req["model"],
        }
        if not stream:
            answer: dict[str, Any] = {
                **head,
                "choices": [{"text": t, "index": i, "logprobs": None, "finish_reason": "stop"} for i, t in enumerate(texts)],
            }
            if behavior.usage:
                answer["usage"] = usage
            return self._json(n, behavior, answer)

        # streams answer the first prompt only
        usage = _usage(_words(prompts[0]), _words(texts[0]))
        with_usage = _include_usage(req) and behavior.usage

        def chunk(piece: str, finish: str | None = None) -> bytes:
            choice = {
                "text": piece,
                "index": 0,
                "logprobs": None,
                "finish_reason": finish,
            }
            obj: dict[str, Any] = {**head, "choices": [choice]}
            if with_usage:
                obj["usage"] = None
            return _event(obj)

        events = [chunk(piece) for piece in _split(texts[0], behavior.chunks)]
        events.append(chunk("", "stop"))
        if with_usage:
            events.append(_event({**head, "choices": [], "usage": usage}))
        events.append(DONE_EVENT)
        return await self._stream(request, n, behavior, events)

    def _embeddings(self, req: dict[str, Any], behavior: Behavior, n: int) -> web.StreamResponse:
        raw = req.get("input")
        inputs: list[str | list[int]]
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
            inputs = [list(raw)]
        elif isinstance(raw, list) and raw and all(isinstance(x, (str, list)) for x in raw):
            inputs = list(raw)
        else:
            return self._error(n, behavior, 400, "'input' is a required property", param="input")
        rejected = next((i for i, x in enumerate(inputs) if isinstance(x, str) and REJECT_INPUT in x), None)
        if rejected is not None:
            message = f"Invalid 'input[{rejected}]': {inputs[rejected]!r} is not allowed."
            return self._error(n, behavior, 400, message, param="input")
        dims = req.get("dimensions")
        dims = dims if isinstance(dims, int) and dims > 0 else EMBEDDING_DIMENSIONS
        b64 = req.get("encoding_format") == "base64"
        data: list[dict[str, Any]] = []
        tokens = 0
        for i, item in enumerate(inputs):
            vector = expected_embedding(item, dims)
            if isinstance(item, str):
                tokens += self.embedding_tokens(item) if self.embedding_tokens is not None else _words(item)
            else:
                tokens += len(item)
            encoded: Any = vector
            if b64:
                encoded = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        answer: dict[str, Any] = {"object": "list", "data": data, "model": req["model"]}
        if behavior.usage:
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return self._json(n, behavior, answer)

    @staticmethod
    def _model_object(model: str) -> dict[str, Any]:
        return {
            "id": model,
            "object": "model",
            "created": 1700000000,
            "owned_by": "fake",
        }

    # ---- response helpers

    @staticmethod
    def _headers(n: int, behavior: Behavior, content_type: str) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        headers["content-type"] = content_type
        headers["x-request-id"] = f"req_fake_{n}"
        headers["openai-processing-ms"] = "1"
        for name, value in behavior.headers.items():
            headers[name] = value  # case-insensitive replace
        return headers

    behavior_type: type[Behavior] = Behavior  # a provider fake's own Behavior subclass
    # embeddings only, set per instance: a latency for every call (so concurrent callers really
    # overlap), and how an input's usage tokens are counted (default: whitespace-separated words)
    embeddings_delay_s: float = 0.0
    embedding_tokens: Callable[[str], int] | None = None

    def _scripted(self, behavior: Behavior, n: int) -> tuple[Any, web.Response | None]:
        """For a provider fake: the script entry as its own Behavior type, and the answer the script
        imposes instead of a normal one (raw `body` bytes, or an error of `status`), if any."""
        b = behavior if isinstance(behavior, self.behavior_type) else self.behavior_type(**vars(behavior))
        if b.body is not None:
            return b, self._reply(n, b, b.body, "application/json")
        if b.status >= 400:
            return b, self._scripted_error(n, b)
        return b, None

    def _scripted_error(self, n: int, behavior: Any) -> web.Response:
        """A scripted error status, in this provider's error format (overridden by the provider fakes)."""
        return self._error(n, behavior, behavior.status)

    def _reply(self, n: int, behavior: Behavior, body: bytes, content_type: str) -> web.Response:
        headers = self._headers(n, behavior, content_type)
        return web.Response(status=behavior.status, body=body, headers=headers)

    def _json(self, n: int, behavior: Behavior, obj: Any) -> web.Response:
        return self._reply(n, behavior, _dumps(obj), "application/json")

    def _error(
        self,
        n: int,
        behavior: Behavior,
        status: int,
        message: str | None = None,
        *,
        code: str | EllipsisType | None = ...,
        param: str | None = None,
    ) -> web.Response:
        payload = error_payload(status, message, code=code, param=param)
        headers = self._headers(n, behavior, "application/json")
        return web.Response(status=status, body=_dumps(payload), headers=headers)

    async def _stream(self, request: web.Request, n: int, behavior: Behavior, events: list[bytes]) -> web.StreamResponse:
        headers = self._headers(n, behavior, "text/event-stream; charset=utf-8")
        resp = web.StreamResponse(status=behavior.status, headers=headers)
        try:
            await resp.prepare(request)  # sends the headers now
            for i, event in enumerate(events):
                if i == behavior.break_after:
                    await self._abort(request)
                    return resp
                if i == behavior.stall_after:
                    await self._until_gone(request)
                    raise _ClientGone
                if i == behavior.garbage_after:
                    await self._write(resp, GARBAGE_EVENT)
                    return resp
                if i and behavior.chunk_delay_s > 0:
                    await self._pause(request, behavior.chunk_delay_s)
                if behavior.split_events:
                    await self._write_split(resp, event)
                else:
                    await self._write(resp, event)
        except _ClientGone:
            if not self._stopping:
                self._record_disconnect()
        return resp

    @staticmethod
    async def _write(resp: web.StreamResponse, data: bytes) -> None:
        try:
            await resp.write(data)
        except ConnectionError as exc:
            raise _ClientGone from exc

    async def _write_split(self, resp: web.StreamResponse, event: bytes) -> None:
        sizes = itertools.cycle(_SPLIT_SIZES)
        pos, end = 0, len(event) - 1
        while pos < end:
            size = next(sizes)
            await self._write(resp, event[pos : min(pos + size, end)])
            pos += size
            await asyncio.sleep(_SPLIT_PAUSE_S)
        await self._write(resp, event[end:])

    async def _pause(self, request: web.BaseRequest, seconds: float) -> None:
        """Sleep, but raise _ClientGone as soon as the client's connection is closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._stopping:
            if _gone(request):
                raise _ClientGone
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, _POLL_S))

    async def _until_gone(self, request: web.BaseRequest) -> None:
        """Send nothing until the client's connection is closed (or the fake stops)."""
        while True:
            if _gone(request) or self._stopping:
                return
            await asyncio.sleep(_POLL_S)

    @staticmethod
    async def _abort(request: web.BaseRequest) -> None:
        """Close the TCP connection once what was written has left (FIN, no terminating chunk)."""
        transport = request.transport
        if transport is None:
            return
        for _ in range(200):
            if transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(_POLL_S)
        transport.abort()


def _include_usage(req: dict[str, Any]) -> bool:
    options = req.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _lower_headers(request: web.BaseRequest) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers
