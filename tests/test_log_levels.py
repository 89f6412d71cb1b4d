"""Log levels mean what they say: start-up and reloads are INFO (shown by default), WARNING is kept
for what needs a look (open mode, a setting that waits for a restart, a failed request)."""

from __future__ import annotations

import re

from tests.conftest import DEFAULT_POLICY, GatewayFactory, config_for
from tests.fakes.openai_upstream import FakeOpenAI
from tests.test_policies import eventually


def test_start_up_and_reloads_are_info(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config_for(fake.base_url))
    assert re.search(r" INFO gateway gateway serving on http://127\.0\.0\.1:\d+ ", gw.log()), gw.log()
    (gw.directory / "policies" / "default.toml").write_text(DEFAULT_POLICY + "\n# edited\n")
    eventually(lambda: "policies reloaded" in gw.log(), within=10)
    config = gw.directory / "config.toml"
    config.write_text(config.read_text() + '\n[models."demo-2"]\ntargets = [{ provider = "demo", model = "echo" }]\n')
    eventually(lambda: "config reloaded" in gw.log(), within=10)
    lines = [line for line in gw.log().splitlines() if "serving on" in line or "reloaded" in line]
    assert len(lines) == 3 and all(" INFO gateway " in line for line in lines), lines
    assert " WARNING " not in gw.log()
