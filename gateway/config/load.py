"""TOML file -> raw dict -> validated `ConfigFile` -> cross-checked, frozen `Config` with a hash.

Every problem is collected before raising, so `gateway check` can print them all at once: secrets
and cross-references are checked on the raw data, so they run even when the schema check failed,
and a file that failed is salvaged (`inspect`) so the policy and prompt files can still be checked
against what it says.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from gateway.config.problems import ConfigError, Problem, dotted, from_validation, salvage
from gateway.config.schema import ConfigFile, ModelSection
from gateway.config.secrets import Secret, resolve

BUILTIN = "<built-in defaults>"

# Runs with no external service at all: one in-process mock model. Never open mode: it serves the keys
# in ./policies, and without any `gateway serve` exits 1 saying so (SPEC section 3: fail closed).
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


def inspect(path: Path | None) -> tuple[Config | None, list[Problem]]:
    """For `gateway check`: the config as far as it could be read, and every problem in it. A config
    that has problems is salvaged (`problems.salvage`): good to check the policy and prompt files
    against, never to serve. None when not even its TOML could be read."""
    if path is None:
        return _inspect(DEFAULTS, BUILTIN, Path.cwd())
    try:
        raw = read_toml(path)
    except ConfigError as exc:
        return None, exc.problems
    return _inspect(raw, str(path), path.resolve().parent)


def build(raw: dict[str, Any], source: str, base_dir: Path) -> Config:
    config, problems = _inspect(raw, source, base_dir)
    if problems:
        raise ConfigError(problems)
    return config


def _inspect(raw: dict[str, Any], source: str, base_dir: Path) -> tuple[Config, list[Problem]]:
    """Schema, secrets and cross-references: each checked on what the file says, whatever the
    others found, so one run reports every problem (a wrong key does not hide a wrong reference)."""
    problems: list[Problem] = []
    try:
        file = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        problems.extend(from_validation(source, exc))
        file = _salvaged(raw)
    secrets = _resolve_secrets(raw, source, base_dir, problems)
    _check_references(raw, source, problems)
    return Config(file=file, source=source, base_dir=base_dir, hash=content_hash(raw), secrets=secrets), problems


def _salvaged(raw: dict[str, Any]) -> ConfigFile:
    file = salvage(ConfigFile, raw) or ConfigFile()
    lost = _names(raw, "models") - set(file.models)
    if not lost:
        return file
    # a model whose table is broken still exists by name: prompts that pin it are not wrong too
    placeholders = {name: ModelSection.model_construct(targets=[]) for name in lost}
    return file.model_copy(update={"models": {**file.models, **placeholders}})


def _names(raw: dict[str, Any], section: str) -> set[str]:
    value = raw.get(section)
    return set(value) if isinstance(value, dict) else set()


def _tables(raw: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    """The entries of a section that are tables; anything else is the schema's to report."""
    value = raw.get(section)
    return {name: t for name, t in value.items() if isinstance(t, dict)} if isinstance(value, dict) else {}


def _items(table: dict[str, Any], key: str) -> Iterator[tuple[int, Any]]:
    value = table.get(key)
    return enumerate(value) if isinstance(value, list) else iter(())


def _text(table: Any, key: str) -> str | None:
    value = table.get(key) if isinstance(table, dict) else None
    return value if isinstance(value, str) else None


def _resolve_secrets(raw: dict[str, Any], source: str, base_dir: Path, problems: list[Problem]) -> dict[str, Secret]:
    secrets = {}
    for name, provider in _tables(raw, "providers").items():
        kind, api_key = _text(provider, "kind"), provider.get("api_key")
        if api_key is None:
            if kind in NEEDS_KEY:
                problems.append(Problem(source, dotted("providers", name, "api_key"), f"required for kind {kind!r}"))
            continue
        if not isinstance(api_key, str):
            continue
        try:
            secrets[name] = resolve(api_key, base_dir)
        except ValueError as exc:
            problems.append(Problem(source, dotted("providers", name, "api_key"), str(exc)))
    return secrets


def _check_references(raw: dict[str, Any], source: str, problems: list[Problem]) -> None:
    for name, provider in _tables(raw, "providers").items():
        problems.extend(Problem(source, dotted("providers", name, key), message) for key, message in _provider_problems(provider))
    providers, models = _names(raw, "providers"), _names(raw, "models")
    for model, section in _tables(raw, "models").items():
        for where, message in _model_references(model, section, providers, models):
            problems.append(Problem(source, dotted("models", model, *where), message))


def _provider_problems(provider: dict[str, Any]) -> Iterator[tuple[str, str]]:
    kind, base_url, azure = _text(provider, "kind"), _text(provider, "base_url"), provider.get("azure") is True
    if kind in NEEDS_BASE_URL and not provider.get("base_url"):
        yield "base_url", f"required for kind {kind!r}"
    if base_url and not base_url.startswith(("http://", "https://")):
        yield "base_url", "must start with http:// or https://"
    if azure and kind != "openai":
        yield "azure", "only for kind 'openai'"
    if provider.get("api_version") is not None and not azure:
        yield "api_version", "only with azure = true"


def _model_references(
    model: str, section: dict[str, Any], providers: set[str], models: set[str]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    for i, target in _items(section, "targets"):
        provider = _text(target, "provider")
        if provider is not None and provider not in providers:
            yield ("targets", i, "provider"), f"no provider named {provider!r}"
    for i, rule in _items(section, "rules"):
        target = _text(rule, "model")
        if target is not None and target not in models:
            yield ("rules", i, "model"), f"no model named {target!r}"
    for i, fallback in _items(section, "fallbacks"):
        if isinstance(fallback, str) and fallback not in models:
            yield ("fallbacks", i), f"no model named {fallback!r}"
        elif fallback == model:
            yield ("fallbacks", i), "a model cannot fall back to itself"
