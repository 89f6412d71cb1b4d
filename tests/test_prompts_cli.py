"""`gateway prompts ...` and `gateway check` from a terminal: against a running gateway's admin API,
and (`--local`) against the prompt files alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from tests.conftest import DEFAULT_POLICY, KEYS, GatewayProcess, config_for
from tests.fakes.openai_upstream import FakeOpenAI
from tests.test_prompts import SUPPORT, start


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    gateway = start(tmp_path_factory.mktemp("cli"), upstream, {"support.toml": SUPPORT})
    yield gateway
    gateway.stop()


@pytest.fixture
def remote(gw: GatewayProcess, monkeypatch: pytest.MonkeyPatch) -> GatewayProcess:
    monkeypatch.setenv("GATEWAY_URL", gw.url)
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", KEYS["admin"])
    return gw


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_show_and_diff_through_the_admin_api(remote: GatewayProcess, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "prompts", "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["ID", "VERSIONS", "LABELS"]
    assert "support-bot  1,2       production=1 staging=2" in out
    code, out, _ = run(capsys, "prompts", "show", "support-bot@staging")
    assert code == 0 and out.startswith("# support-bot@2  hash ") and "labels staging" in out
    assert "--- message 1 (system)\nv2 support for {{ product }}.\n" in out
    code, out, _ = run(capsys, "prompts", "diff", "support-bot", "production", "2")
    assert code == 0
    assert "--- support-bot@1\n+++ support-bot@2\n" in out
    assert "-You are the support assistant for {{product}}.\n+v2 support for {{ product }}.\n" in out
    assert '-params = {"max_tokens": 256, "temperature": 0.2}\n+params = {"temperature": 0.7}\n' in out


def test_push_label_and_test(remote: GatewayProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    file = tmp_path / "new.toml"
    file.write_text(
        """
[[prompts.cli-bot.versions]]
model = "gpt-4o-mini"
variables = ["q"]
messages = [{ role = "user", content = "{{q}}" }]
[[prompts.cli-bot.versions.tests]]
variables = { q = '{"answer": 42}' }
regex = "echo: \\\\{"
not_contains = "sorry"
max_latency_ms = 10000
[[prompts.cli-bot.versions.tests]]
variables = { q = "plain" }
json_schema = { type = "object" }
"""
    )
    code, out, _ = run(capsys, "prompts", "push", str(file))
    assert code == 0 and out.startswith("cli-bot@1  created")
    code, out, _ = run(capsys, "prompts", "push", str(file))
    assert code == 0 and out.startswith("cli-bot@1  exists")
    code, out, _ = run(capsys, "prompts", "test", "cli-bot@1")
    assert code == 1
    lines = out.splitlines()
    assert lines[1].split() == ["CASE", "RESULT", "LATENCY_MS", "COST_USD", "DETAIL"]
    assert lines[2].split()[:2] == ["1", "pass"]
    assert lines[3].split()[:2] == ["2", "FAIL"] and "json_schema: the answer is not valid JSON" in lines[3]
    assert lines[-1] == "1/2 passed"
    code, _, err = run(capsys, "prompts", "label", "cli-bot", "production", "1")
    assert code == 1 and "HTTP 409" in err and "test case(s) 2 fail" in err
    code, out, _ = run(capsys, "prompts", "label", "cli-bot", "production", "1", "--force")
    assert code == 0 and out == "cli-bot: production -> 1  (FORCED: its tests fail)\n"
    code, out, _ = run(capsys, "prompts", "test", "support-bot@production")
    assert code == 0 and out.splitlines()[-1] == "1/1 passed"


def test_errors_say_what_went_wrong(remote: GatewayProcess, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "prompts", "show", "nope@1")
    assert code == 2 and "HTTP 404" in err and "nope" in err
    code, _, err = run(capsys, "prompts", "list", "--key", KEYS["alpha"])
    assert code == 2 and "HTTP 403" in err
    code, _, err = run(capsys, "prompts", "list", "--url", "http://127.0.0.1:9")
    assert code == 2 and "cannot reach the gateway" in err


def write_config(tmp_path: Path, prompt: str) -> Path:
    (tmp_path / "prompts").mkdir(exist_ok=True)
    (tmp_path / "prompts" / "support.toml").write_text(prompt)
    path = tmp_path / "config.toml"
    path.write_text(config_for("http://127.0.0.1:9/v1"))
    return path


def test_local_reads_the_files_without_a_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "x")
    config = str(write_config(tmp_path, SUPPORT))
    code, out, _ = run(capsys, "prompts", "list", "--local", "--config", config)
    assert code == 0 and "secret       1         production=1" in out
    code, out, _ = run(capsys, "prompts", "diff", "support-bot", "1", "2", "--local", "--config", config)
    assert code == 0 and "+v2 {{question}}" in out


def test_check_validates_prompt_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "x")
    good = write_config(tmp_path, SUPPORT)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "default.toml").write_text(DEFAULT_POLICY)  # no key at all would be a problem of its own
    assert run(capsys, "check", "--config", str(good))[0] == 0
    write_config(
        tmp_path,
        SUPPORT.replace("{{product}}.", "{{ product.__class__ }}.").replace(
            '"gpt-4o-mini"\nmessages = [{ role = "user", content = "secret"', '"gpt-9"\nmessages = [{ role = "user", content = "secret"'
        ),
    )
    code, out, _ = run(capsys, "check", "--config", str(good))
    source = tmp_path / "prompts" / "support.toml"
    assert code == 1
    assert out.splitlines() == [
        f"{source}: prompts.support-bot.versions[0].messages[0].content: "
        "{{ product.__class__ }} is not a variable name: only {{name}} is substituted",
        f"{source}: prompts.secret.versions[0].model: no model named 'gpt-9' in the config",
    ]
