"""The config holder (gateway/config/holder.py) on real files: a policy edit swaps in new policies
and keeps what the request path built for the catalog; a config edit builds them again; a broken
edit keeps the last good snapshot. It knows the request path only through the factory it is given:
importing it loads nothing of the pipeline."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.catalog import Catalog, build_catalog
from gateway.config import Config, load
from gateway.config.holder import ConfigHolder
from gateway.upstream import Pool
from tests.conftest import DEFAULT_POLICY, UPSTREAM_KEY, config_for


def test_importing_the_holder_loads_no_pipeline_module() -> None:
    code = "import sys, gateway.config.holder; print(sorted(m for m in sys.modules if m.startswith('gateway.pipeline')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_reloads_swap_whole_snapshots_and_keep_the_last_good_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", UPSTREAM_KEY)
    (tmp_path / "policies").mkdir()
    policy_file = tmp_path / "policies" / "default.toml"
    policy_file.write_text(DEFAULT_POLICY)
    config_file = tmp_path / "config.toml"
    config_file.write_text(config_for("http://127.0.0.1:9/v1"))
    built: list[tuple[object, object]] = []

    def build(config: Config, catalog: Catalog) -> tuple[object, object]:
        built.append((object(), object()))
        return built[-1]

    holder: ConfigHolder[object, object] = ConfigHolder(load(config_file), lambda c: build_catalog(c, Pool(1)), build)
    first = holder.live
    assert (first.attempts, first.reuse) == built[0] and holder.status()["last_error"] is None

    policy_file.write_text(DEFAULT_POLICY + "\n# edited\n")
    asyncio.run(holder.reload())
    assert holder.live.policies.version != first.policies.version
    assert (holder.live.attempts, holder.live.reuse, holder.live.config) == (first.attempts, first.reuse, first.config)

    config_file.write_text(config_file.read_text() + '\n[models."demo-2"]\ntargets = [{ provider = "demo", model = "echo" }]\n')
    asyncio.run(holder.reload())
    assert "demo-2" in holder.live.catalog.models and (holder.live.attempts, holder.live.reuse) == built[1]

    good = holder.live
    config_file.write_text("[models.broken\n")
    asyncio.run(holder.reload())
    assert holder.live is good and holder.status()["last_error"] and len(built) == 2
