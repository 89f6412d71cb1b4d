"""Builders for the TOML the tests write: policy files (teams and keys) and gateway configs, so that
a test states only the teams, keys, models and state it is about.

    policy({"alpha": team("gpt-*", rpm=3)}, [api_key("alpha-app", "alpha", KEYS["alpha"], admin=True)])
    default_policy(beta=team("demo-echo", tools=["search_kb"]))    # the default set, beta changed

Every builder returns the text a user would write, so the gateway reads the files as it always does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Literal

KEYS = {"alpha": "sk-test-alpha-0123456789abcdef", "beta": "sk-test-beta-0123456789abcdef", "admin": "sk-test-admin-0123456789abcdef"}

Table = Mapping[str, object]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def toml_value(value: object) -> str:
    """One TOML value: a string, boolean, number, array or inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML value for {value!r}")


def table(header: str, values: Table) -> str:
    """A `[header]` table; `[[header]]` for an entry of an array of tables."""
    return f"{header}\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


def team(*models: str, **settings: object) -> dict[str, object]:
    """A team's table: the model globs it may use, then its other settings (rpm, tpm, max_concurrent,
    max_tokens, budget_usd_per_day, prompts, tools, cache, guardrails as a dict)."""
    return {"models": list(models), **settings}


def api_key(name: str, team: str, secret: str, admin: bool | Literal["team"] = False, **settings: object) -> dict[str, object]:
    """A `[[keys]]` entry, holding only the key's SHA-256; `admin` is true (every team) or "team"
    (its own); `settings` are the key's own limits (rpm = 5)."""
    return {"name": name, "team": team, **settings, **({"admin": admin} if admin else {}), "sha256": sha(secret)}


def policy(teams: Mapping[str, Table], keys: Iterable[Table] = ()) -> str:
    """A policy file: `[teams.<name>]` tables, then `[[keys]]`."""
    parts = [table(f"[teams.{name}]", settings) for name, settings in teams.items()]
    return "\n".join(parts + [table("[[keys]]", k) for k in keys])


def fake_provider(base_url: str, timeout_s: float | None = None) -> str:
    """`[providers.fake]`: the fake OpenAI at `base_url`, with the upstream key every test gateway is
    given (conftest.UPSTREAM_KEY in FAKE_UPSTREAM_KEY) and, when set, its first-byte and idle timeouts."""
    timeouts = {} if timeout_s is None else {"first_byte_timeout_s": timeout_s, "idle_timeout_s": timeout_s}
    return table("[providers.fake]", {"kind": "openai", "base_url": base_url, "api_key": "env:FAKE_UPSTREAM_KEY", **timeouts})


DEFAULT_TEAMS: dict[str, Table] = {"alpha": team("gpt-*", "demo-*", "slow*"), "beta": team("demo-echo")}
DEFAULT_KEYS = (
    api_key("alpha-app", "alpha", KEYS["alpha"]),
    api_key("beta-app", "beta", KEYS["beta"]),
    api_key("ops", "alpha", KEYS["admin"], admin=True),
)


def default_policy(keys: Iterable[Table] = (), **teams: Table) -> str:
    """The default policy (teams alpha and beta; keys alpha-app, beta-app and the admin ops, of
    alpha), with the teams named here replaced or added and `keys` added."""
    return policy({**DEFAULT_TEAMS, **teams}, [*DEFAULT_KEYS, *keys])


DEFAULT_POLICY = default_policy()
