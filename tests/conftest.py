"""Shared fixtures: a fake OpenAI upstream on a real socket, and gateways run as real processes.

`gateway_factory` writes a config and policy files to a temporary directory and starts
`python -m gateway serve` on a free port, exactly as a user would; tests then talk to it over
HTTP with the official `openai` SDK or httpx.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.builders import DEFAULT_POLICY, fake_provider
from tests.builders import KEYS as KEYS  # noqa: PLC0414  (re-exported: the tests import KEYS and sha from here)
from tests.builders import sha as sha  # noqa: PLC0414
from tests.fakes.openai_upstream import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class GatewayProcess:
    directory: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


GatewayFactory = Callable[..., GatewayProcess]


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(upstream: FakeOpenAI) -> FakeOpenAI:
    upstream.reset()
    return upstream


def config_for(upstream_url: str, extra: str = "", server: str = "", state: str = "", open_mode: bool = False) -> str:
    """The default config: `fake` (the fake OpenAI at `upstream_url`) serves gpt-4o-mini, `demo` (the
    mock) demo-echo; `server` and `state` add lines to those tables, `open_mode` admits keyless requests, `extra`
    adds tables at the end."""
    return f"""
[server]
host = "127.0.0.1"
{server}

[state]
traces = "sqlite:///traces.db"
{state}

{fake_provider(upstream_url, timeout_s=2)}
[providers.demo]
kind = "mock"
chunks = 4

[models."gpt-4o-mini"]
targets = [{{ provider = "fake", model = "gpt-4o-mini-upstream" }}]
retries = 0  # the foundation tests see each upstream fault as it is; routing tests retry

[models."demo-echo"]
targets = [{{ provider = "demo", model = "echo" }}]

[policies]
dir = "policies"
{"open = true" if open_mode else ""}
{extra}
"""


UPSTREAM_KEY = "sk-upstream-canary-9f8e7d6c5b4a"


def start_gateway(
    directory: Path,
    config: str,
    policies: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    files: dict[str, str] | None = None,
) -> GatewayProcess:
    """Write `config`, the `policies` files (DEFAULT_POLICY unless given) and any other `files`
    (paths relative to `directory`: "prompts/support.toml"), then start the gateway there."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.toml").write_text(config)
    (directory / "policies").mkdir(exist_ok=True)
    written = {f"policies/{name}": text for name, text in (policies if policies is not None else {"default.toml": DEFAULT_POLICY}).items()}
    for name, text in {**written, **(files or {})}.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    port = free_port()
    log_path = directory / "gateway.log"
    full_env = {**os.environ, "FAKE_UPSTREAM_KEY": UPSTREAM_KEY, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(directory / "config.toml"), "--port", str(port), *args],
        cwd=directory,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env=full_env,
    )
    gw = GatewayProcess(directory, port, process, log_path, full_env)
    gw.wait_ready()
    return gw


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    started: list[GatewayProcess] = []

    def make(
        config: str,
        policies: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        name: str = "gw",
        files: dict[str, str] | None = None,
    ) -> GatewayProcess:
        gw = start_gateway(tmp_path / f"{name}{len(started)}", config, policies, args, env, files)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop(timeout=10)


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    """One gateway for a whole test module, with the default config and policies."""
    gw = start_gateway(tmp_path_factory.mktemp("gw"), config_for(upstream.base_url))
    yield gw
    gw.stop()


@pytest.fixture
def gateway(module_gateway: GatewayProcess, fake: FakeOpenAI) -> GatewayProcess:
    return module_gateway


def need_redis(port: int = 6379) -> None:
    """Skip without Redis, except under CI=true, where a skipped Redis test would hide a failure."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable on 127.0.0.1:{port} (required under CI)")
        pytest.skip(f"Redis is not reachable on 127.0.0.1:{port}")


@dataclass
class RedisServer:
    """A redis-server of a test's own, on a free port, that the test may kill, pause and restart."""

    binary: str
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (required under CI)")
        pytest.skip("redis-server is not installed")
    server = RedisServer(binary, tmp_path)
    server.start()
    yield server
    server.kill()
