"""The `gateway` command in a pipe and on Ctrl-C: a quiet exit with the shell's code, never a traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tests.conftest import GatewayFactory, config_for
from tests.fakes.openai_upstream import FakeOpenAI
from tests.traceutil import admin_get, client, wait_for


def test_export_into_a_reader_that_stops_early_exits_quietly(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config_for(fake.base_url))
    sdk = client(gw)
    for i in range(300):  # ~120 KB of rows: more than a pipe holds, so the export writes after the reader left
        sdk.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": f"question number {i} " * 4}])
    wait_for(lambda: admin_get(gw, "/admin/traces", limit=1).json()["data"], what="a trace")
    time.sleep(0.5)
    export = subprocess.Popen(
        [sys.executable, "-m", "gateway", "traces", "export", "--config", str(gw.directory / "config.toml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert export.stdout is not None and export.stderr is not None
    assert export.stdout.readline().startswith(b"{")
    export.stdout.close()  # what `| head -1` does
    assert export.wait(60) == 128 + signal.SIGPIPE
    assert export.stderr.read() == b""


def test_ctrl_c_exits_quietly_with_130(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config_for(fake.base_url))
    tail = subprocess.Popen(
        [sys.executable, "-m", "gateway", "traces", "tail", "--config", str(gw.directory / "config.toml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(2)  # imported and following
    tail.send_signal(signal.SIGINT)
    assert tail.wait(30) == 128 + signal.SIGINT
    assert tail.stderr is not None and b"Traceback" not in tail.stderr.read()
