"""Serving: uvicorn (uvloop + httptools) with the two things it lacks, and a small supervisor.

uvicorn was measured against granian here: equal throughput at 64 connections, lower latency at
one connection; but it never closes a connection that trickles its request headers or body, nor
one whose client stops reading, and after a graceful SIGTERM it re-raises the signal (exit code
-15). `GuardedHttpToolsProtocol` bounds all three (`header_timeout_s`, `body_timeout_s`,
`stream_stall_timeout_s`), and `GatewayServer`
drains (stop accepting, finish in-flight requests and streams within `drain_timeout_s`, run the
lifespan shutdown) and then returns, so the process exits 0.

`--workers N` forks N processes sharing one listening socket (`Supervisor`); SIGTERM to the
supervisor is passed on to every worker, which drains as above. The supervisor also runs the one
trace writer process all workers feed (gateway/traces/writer.py) and stops it after them, so it
flushes last; with one worker, the worker's lifespan starts and stops its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import termios
from collections.abc import Generator
from pathlib import Path
from types import FrameType

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.app import create_app
from gateway.config import Config, load
from gateway.pipeline.body import BODY_TIMED_OUT
from gateway.streaming import STALLED
from gateway.traces.writer import WriterProcess, settings_from

log = logging.getLogger("gateway")


OUTQ: int | None = getattr(termios, "TIOCOUTQ", None) if sys.platform == "linux" else None  # = SIOCOUTQ on a TCP socket
COALESCE_MAX = 64 * 1024  # larger writes go out at once (after what is held), not copied into one buffer


class CoalescingTransport:
    """A connection's transport that sends everything written to it in one event-loop iteration
    with one `write()` (one send syscall) at the end of that iteration.

    uvicorn writes a response's status line and headers, then its body, each with a write of its
    own, and uvloop sends each at once: two syscalls for every small response, which were the
    largest single cost of a cache hit (measured with loadtests/hit_cpu.sh). What is held is sent
    before a close and dropped on an abort; everything else is the real transport's.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if len(data) > COALESCE_MAX:
            self.flush()
            self._transport.write(data)
        else:
            if not self._held:
                self._loop.call_soon(self.flush)
            self._held.append(data)

    def flush(self) -> None:
        if self._held:
            data = b"".join(self._held) if len(self._held) > 1 else self._held[0]
            self._held.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Notes when a request's headers began, when its body began, and when the client stopped
    accepting data; `GatewayServer` sweeps the connections once a second and cuts off the slow ones.
    Its responses leave through a `CoalescingTransport`.

    A timestamp per request and one sweep a second over the open connections cost less than arming
    and cancelling a timer for every request (or every streamed chunk).

    - headers not complete within `header_timeout`: the connection is closed.
    - body not complete within `body_timeout` of the headers: the scope is marked and the app's
      `receive` woken, so `read_body` answers 408 `request_timeout` (with `connection: close`) and
      the request is traced and its slot freed; if nobody answers within CLOSE_GRACE_S, or the
      response is already out, the connection is closed.
    - writes paused (the transport's buffer over its high-water mark) and the client taking none of
      it for `stall_timeout` (checked by the sweep): the scope is marked `STALLED` and the
      connection aborted, which ends the response like a disconnect (the relay closes its upstream
      connection and the trace says `client_stalled`). uvicorn's `send` waits in `flow.drain()`
      while writes are paused, with no bound of its own: this is that bound.
    """

    header_timeout = 10.0
    body_timeout = 30.0
    stall_timeout = 30.0
    headers_since: float | None = None  # loop time the current request's headers began; None once complete
    body_since: float | None = None  # loop time its body began (headers complete); None once complete
    paused_since: float | None = None  # loop time writes were paused, or the client last took data while they are
    paused_size = 0  # the transport's buffer then

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self.headers_since = self.loop.time()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.headers_since is None:
            self.headers_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self.headers_since = None
        self.body_since = self.loop.time()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.body_since = None
        super().on_message_complete()

    def pause_writing(self) -> None:
        self.paused_since, self.paused_size = self.loop.time(), self._backlog()
        super().pause_writing()

    def resume_writing(self) -> None:
        self.paused_since = None
        super().resume_writing()

    def headers_overdue(self, now: float) -> bool:
        return self.headers_since is not None and now - self.headers_since > self.header_timeout

    def sweep(self, now: float) -> None:
        """Once a second: cut off a client too slow to send its request or to read its answer."""
        if self.headers_overdue(now):
            self.transport.close()
        elif self.body_since is not None and now - self.body_since > self.body_timeout:
            self._body_overdue(now)
        elif self.paused_since is not None:
            self._check_stall(now)

    def _check_stall(self, now: float) -> None:
        # nothing is written while paused (uvicorn's send waits first), so a smaller backlog means the
        # client took some: a slow reader is not a stalled one
        size = self._backlog()
        if size < self.paused_size:
            self.paused_since, self.paused_size = now, size
        elif self.paused_since is not None and now - self.paused_since > self.stall_timeout:
            if self.cycle is not None:
                self.cycle.scope[STALLED] = True  # type: ignore[literal-required]
            self.paused_since = None
            self.transport.abort()  # close() would wait for the buffer the client does not read

    def _backlog(self) -> int:
        """Bytes written and not yet taken by the client: the transport's buffer plus, where the OS
        tells (Linux: SIOCOUTQ), the socket's send queue, which a reader drains long before the
        kernel reports the socket writable again."""
        size = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None and OUTQ is not None:
            with contextlib.suppress(OSError, ValueError):
                size += int.from_bytes(fcntl.ioctl(sock.fileno(), OUTQ, bytes(4)), sys.byteorder, signed=True)
        return size

    def _body_overdue(self, now: float) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete or cycle.disconnected or BODY_TIMED_OUT in cycle.scope:
            self.body_since = None
            self.transport.close()  # answered (or told to answer) already: the rest of the body is not wanted
            return
        cycle.scope[BODY_TIMED_OUT] = self.body_timeout  # type: ignore[literal-required]
        cycle.message_event.set()  # wakes `receive`: read_body sees an empty message and the mark
        self.body_since = now - self.body_timeout + CLOSE_GRACE_S


CLOSE_GRACE_S = 5.0  # after a body timeout, the app's 408 has this long to go out before the connection is closed


def settle_interpreter() -> None:
    """Process-wide settings for a serving worker, once its app is built and its lifespan ran."""
    # everything loaded so far lives as long as the process: move it out of the garbage
    # collector's generations, so collections triggered by per-request allocations stay cheap
    gc.collect()
    gc.freeze()
    # a request allocates a few hundred objects, almost all freed by reference counting: collect the
    # young generation less often, so objects of requests still in flight are not promoted and
    # re-scanned by older generations
    gc.set_threshold(20_000, 20, 20)


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway_config: Config) -> None:
        super().__init__(config)
        self._gateway_config = gateway_config

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the lifespan first: a failed one exits here
        settle_interpreter()

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:  # uvicorn ticks every 0.1 s
            now = asyncio.get_running_loop().time()
            for connection in list(self.server_state.connections):
                if isinstance(connection, GuardedHttpToolsProtocol):
                    connection.sweep(now)
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.loaded_app
        gateway = getattr(getattr(app, "state", None), "gateway", None)
        if gateway is not None:
            gateway.draining = True
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # like uvicorn's, but a handled SIGTERM/SIGINT is not re-raised: a drained gateway exits 0
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def uvicorn_config(config: Config, trace_writer: str | None = None) -> uvicorn.Config:
    server = config.file.server
    timeouts = {
        "header_timeout": server.header_timeout_s,
        "body_timeout": server.body_timeout_s,
        "stall_timeout": server.stream_stall_timeout_s,
    }
    protocol = type("Protocol", (GuardedHttpToolsProtocol,), timeouts)
    return uvicorn.Config(
        create_app(config, trace_writer),
        loop="uvloop",
        http=protocol,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(server.drain_timeout_s) or None,
        timeout_keep_alive=5,
        server_header=False,
        proxy_headers=False,
        date_header=False,
        backlog=4096,
    )


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def run_worker(config_path: str | None, host: str, port: int, sock: socket.socket, trace_writer: str | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    config = load(Path(config_path) if config_path else None)
    GatewayServer(uvicorn_config(config, trace_writer), config).run(sockets=[sock])


def serve(config: Config, config_path: str | None, host: str, port: int, workers: int) -> int:
    if workers <= 1:
        server = GatewayServer(uvicorn_config(config), config)
        server.config.host, server.config.port = host, port
        log.info("gateway serving on http://%s:%d (config %s, hash %s)", host, port, config.source, config.hash)
        server.run()
        return 0 if server.started else 1
    return Supervisor(config_path, host, port, workers, config).run()


class Supervisor:
    """Runs N worker processes on one shared socket; forwards SIGTERM/SIGINT and waits for them."""

    def __init__(self, config_path: str | None, host: str, port: int, workers: int, config: Config) -> None:
        self.config_path, self.host, self.port, self.workers = config_path, host, port, workers
        self.config = config
        self._stop = False

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._stop = True

    def run(self) -> int:
        metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        sock = bind(self.host, self.port)
        writer = WriterProcess(settings_from(self.config))  # one trace writer for every worker
        ctx = multiprocessing.get_context("spawn")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

        def spawn() -> multiprocessing.process.BaseProcess:
            proc = ctx.Process(target=run_worker, args=(self.config_path, self.host, self.port, sock, writer.address))
            proc.start()
            return proc

        procs = [spawn() for _ in range(self.workers)]
        log.info("gateway serving on http://%s:%d with %d workers", self.host, self.port, self.workers)
        while not self._stop:
            procs[0].join(0.5)
            for i, proc in enumerate(procs):
                if not proc.is_alive() and not self._stop:
                    log.error("worker %s exited with %s; starting a new one", proc.pid, proc.exitcode)
                    procs[i] = spawn()
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join()
        sock.close()
        written = writer.stop(self.config.file.server.drain_timeout_s + 60)  # after the workers flushed to it
        shutil.rmtree(metrics_dir, ignore_errors=True)
        return 0 if written == 0 and all(p.exitcode == 0 for p in procs) else 1
