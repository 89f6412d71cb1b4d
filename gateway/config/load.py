"""TOML file -> raw dict -> validated `ConfigFile` -> cross-checked, frozen `Config` with a hash.

Every problem is collected before raising, so `gateway check` can print them all at once.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from gateway.config.problems import ConfigError, Problem, dotted, from_validation
from gateway.config.schema import ConfigFile
from gateway.config.secrets import Secret, resolve

BUILTIN = "<built-in defaults>"

# Runs with no external service at all: one in-process mock model, open mode unless ./policies exists.
DEFAULTS: dict[str, Any] = {
    "providers": {"demo": {"kind": "mock"}},
    "models": {"demo-echo": {"targets": [{"provider": "demo", "model": "echo"}]}},
}

NEEDS_BASE_URL = frozenset({"openai"})
NEEDS_KEY = frozenset({"anthropic", "gemini"})


@dataclass(frozen=True, slots=True)
class Config:
    file: ConfigFile
    source: str  # path of the file, or BUILTIN
    base_dir: Path  # relative paths in the file are relative to this
    hash: str
    secrets: dict[str, Secret] = field(default_factory=dict)  # provider name -> api key

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p


def default_path() -> Path | None:
    """$GATEWAY_CONFIG, else ./config.toml, else None (built-in defaults)."""
    env = os.environ.get("GATEWAY_CONFIG")
    if env:
        return Path(env)
    local = Path("config.toml")
    return local if local.exists() else None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, raising ConfigError naming the file on unreadable or invalid TOML."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([Problem(str(path), "", f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(str(path), "", f"invalid TOML: {exc}")]) from None


def content_hash(raw: object) -> str:
    return hashlib.sha256(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def load(path: Path | None) -> Config:
    if path is None:
        return build(DEFAULTS, BUILTIN, Path.cwd())
    return build(read_toml(path), str(path), path.resolve().parent)


def build(raw: dict[str, Any], source: str, base_dir: Path) -> Config:
    try:
        file = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(from_validation(source, exc)) from None
    problems: list[Problem] = []
    secrets = _resolve_secrets(file, source, base_dir, problems)
    _check_references(file, source, problems)
    if problems:
        raise ConfigError(problems)
    return Config(file=file, source=source, base_dir=base_dir, hash=content_hash(raw), secrets=secrets)


def _resolve_secrets(file: ConfigFile, source: str, base_dir: Path, problems: list[Problem]) -> dict[str, Secret]:
    secrets = {}
    for name, provider in file.providers.items():
        if provider.api_key is None:
            if provider.kind in NEEDS_KEY:
                problems.append(Problem(source, dotted("providers", name, "api_key"), f"required for kind {provider.kind!r}"))
            continue
        try:
            secrets[name] = resolve(provider.api_key, base_dir)
        except ValueError as exc:
            problems.append(Problem(source, dotted("providers", name, "api_key"), str(exc)))
    return secrets


def _check_references(file: ConfigFile, source: str, problems: list[Problem]) -> None:
    for name, provider in file.providers.items():
        if provider.kind in NEEDS_BASE_URL and not provider.base_url:
            problems.append(Problem(source, dotted("providers", name, "base_url"), f"required for kind {provider.kind!r}"))
        if provider.base_url and not provider.base_url.startswith(("http://", "https://")):
            problems.append(Problem(source, dotted("providers", name, "base_url"), "must start with http:// or https://"))
        if provider.azure and provider.kind != "openai":
            problems.append(Problem(source, dotted("providers", name, "azure"), "only for kind 'openai'"))
        if provider.api_version is not None and not provider.azure:
            problems.append(Problem(source, dotted("providers", name, "api_version"), "only with azure = true"))
    for model, section in file.models.items():
        for i, target in enumerate(section.targets):
            if target.provider not in file.providers:
                problems.append(
                    Problem(source, dotted("models", model, "targets", i, "provider"), f"no provider named {target.provider!r}")
                )
        for i, rule in enumerate(section.rules):
            if rule.model not in file.models:
                problems.append(Problem(source, dotted("models", model, "rules", i, "model"), f"no model named {rule.model!r}"))
        for i, fallback in enumerate(section.fallbacks):
            if fallback not in file.models:
                problems.append(Problem(source, dotted("models", model, "fallbacks", i), f"no model named {fallback!r}"))
            elif fallback == model:
                problems.append(Problem(source, dotted("models", model, "fallbacks", i), "a model cannot fall back to itself"))
