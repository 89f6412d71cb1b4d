"""Interpreter-wide settings belong to a serving worker (gateway/server.py), not to the app: an app
built and started elsewhere (a test, an embedding program) leaves the garbage collector and the
environment as it found them. Each case runs in its own interpreter, whose state it reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import DEFAULT_POLICY, UPSTREAM_KEY, config_for

SCRIPT = """
import asyncio, gc, json, os, sys
from pathlib import Path
from gateway.app import create_app
from gateway.config import load
from gateway.server import GatewayServer, bind, uvicorn_config

config = load(Path("config.toml"))
before = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}

async def app_alone():
    app = create_app(config)
    async with app.router.lifespan_context(app):
        app.state.gateway.tokenizer.count_text("hello world", "gpt-4o")

async def worker():
    server = GatewayServer(uvicorn_config(config), config)
    task = asyncio.create_task(server.serve(sockets=[bind("127.0.0.1", 0)]))
    while not server.started:
        await asyncio.sleep(0.05)
    server.should_exit = True
    await task

asyncio.run(app_alone() if sys.argv[1] == "app" else worker())
after = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
print(json.dumps({"before": before, "after": after, "env": sorted(k for k in os.environ if "TIKTOKEN" in k)}))
"""


def run(tmp_path: Path, mode: str) -> dict[str, dict[str, object]]:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "default.toml").write_text(DEFAULT_POLICY)
    (tmp_path / "config.toml").write_text(config_for("http://127.0.0.1:9/v1"))
    env = {k: v for k, v in os.environ.items() if "TIKTOKEN" not in k and k != "DATA_GYM_CACHE_DIR"}
    env |= {"FAKE_UPSTREAM_KEY": UPSTREAM_KEY, "TMPDIR": str(tmp_path)}  # tiktoken's default cache: in tmp_path
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, dict[str, object]] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_an_app_started_alone_leaves_the_interpreter_as_it_found_it(tmp_path: Path) -> None:
    state = run(tmp_path, "app")
    assert state["after"] == state["before"]  # no gc.freeze, no new thresholds
    assert state["env"] == []  # token counting wrote no TIKTOKEN_CACHE_DIR
    assert any((tmp_path / "data-gym-cache").iterdir())  # it filled the directory tiktoken reads by itself


def test_a_serving_worker_freezes_what_it_loaded_and_collects_less_often(tmp_path: Path) -> None:
    state = run(tmp_path, "worker")
    assert state["after"]["threshold"] == [20_000, 20, 20] and state["before"]["threshold"] != [20_000, 20, 20]
    assert isinstance(state["after"]["frozen"], int) and state["after"]["frozen"] > 0 == state["before"]["frozen"]
