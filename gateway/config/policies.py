"""Access policies (SPEC section 3): teams, keys, and what each key may call.

Files in the policies directory are validated together and compiled against the config's models
into one immutable `PolicySet`: a key's SHA-256 maps straight to the frozen set of model names it
may use, so the per-request check is two dict/set lookups and no glob matching. A set with any
problem is never built: the caller keeps the last good one.

Fail closed: a set without a single key is a problem too, unless the config says `[policies]
open = true`. So a deleted, emptied or misnamed policy directory stops a start and is refused by a
reload, instead of silently admitting everyone.
"""

from __future__ import annotations

import fnmatch
import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from gateway.config.load import BUILTIN, Config
from gateway.config.problems import ConfigError, Problem, dotted, from_validation, salvage
from gateway.config.schema import Strict
from gateway.guardrails import Guardrails, GuardrailsSection
from gateway.limits.quota import Limit, Quota
from gateway.limits.rules import NANO


class Limits(Strict):
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    max_concurrent: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    budget_usd_per_day: float | None = Field(None, ge=0)
    budget_usd_per_month: float | None = Field(None, ge=0)


class TeamSection(Limits):
    models: list[str] = ["*"]
    prompts: list[str] | None = None  # None = any prompt id
    tools: list[str] | None = None  # None = any function tool
    cache: bool = True  # false: this team's requests never read, write or share cached answers
    capture_content: Literal["none", "metadata", "full"] | None = None  # overrides [telemetry] capture_content
    guardrails: GuardrailsSection = GuardrailsSection()


class KeySection(Limits):
    name: str = Field(min_length=1)
    team: str
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    admin: bool | Literal["team"] = False  # true: the whole admin API; "team": its own team's objects only


class PolicyFile(Strict):
    teams: dict[str, TeamSection] = {}
    keys: list[KeySection] = []


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: what a request is admitted as. Never holds the key itself."""

    key_name: str
    team: str
    admin: bool | Literal["team"]  # True: global admin; "team": admin of its team's objects; False: none
    models: frozenset[str]
    limits: Limits
    prompts: frozenset[str] | None
    tools: frozenset[str] | None
    cache: bool = True  # the team's response-cache opt-out
    capture: str | None = None  # the team's capture_content override, if any
    quota: Quota | None = None  # None: no limit applies
    guard: Guardrails | None = None  # the team's guardrails; None: none configured


@dataclass(frozen=True, slots=True)
class PolicySet:
    keys: dict[str, Principal]  # lower-case hex sha256 -> principal
    version: str  # content hash of every file, in name order
    files: tuple[str, ...]
    open: Principal | None  # [policies] open = true: who a request without a listed key is (never an admin)


OPEN = "open"  # open mode's principal: its key name and team, in traces and metrics


def policy_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.toml")) if directory.is_dir() else []


def load_policies(config: Config) -> PolicySet:
    directory = config.path(config.file.policies.dir)
    files = policy_files(directory)
    problems: list[Problem] = []
    parsed: list[tuple[str, PolicyFile]] = []
    digest = hashlib.sha256()
    for path in files:
        try:
            text = path.read_bytes()  # read once: the version hashes exactly what was validated
            digest.update(path.name.encode() + b"\0" + text + b"\0")
            raw: dict[str, Any] = tomllib.loads(text.decode())
            parsed.append((str(path), PolicyFile.model_validate(raw)))
        except OSError as exc:  # e.g. removed since the listing: this set is not one that exists; the next poll sees it settled
            problems.append(Problem(str(path), "", f"cannot read: {exc.strerror}"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            problems.append(Problem(str(path), "", f"invalid TOML: {exc}"))
        except ValidationError as exc:
            problems.extend(from_validation(str(path), exc))
            readable = salvage(PolicyFile, raw)  # its keys and teams are still checked against the rest
            if readable is not None:
                parsed.append((str(path), readable))
    models = sorted(config.file.models)
    keys = _compile(parsed, models, problems)
    is_open = config.file.policies.open
    if not keys and not is_open and not problems:
        problems.append(no_keys(config, directory, files))
    if is_open and any(p.team == OPEN for p in keys.values()):  # its admin would see every keyless request
        problems.append(Problem(config.source, "policies.open", f"a team named {OPEN!r} is reserved for open mode's requests: rename it"))
    if problems:
        raise ConfigError(problems)
    everyone = Principal(OPEN, OPEN, False, frozenset(models), Limits(), None, None) if is_open else None
    return PolicySet(keys=keys, version=digest.hexdigest()[:16], files=tuple(p.name for p in files), open=everyone)


def no_keys(config: Config, directory: Path, files: list[Path]) -> Problem:
    """The problem a set without any key is: named by its directory, saying both ways out."""
    found = f"the policy files in {directory} define" if files else f"{directory} holds no policy file (*.toml), so it defines"
    where = "a config file (--config)" if config.source == BUILTIN else config.source
    return Problem(
        config.source,
        "policies",
        f"{found} no API key, and [policies] open is false: the gateway would admit nobody. Add a key with "
        f"`gateway keys new` to a *.toml file there, or set [policies] open = true in {where} to admit requests without a key.",
    )


def _compile(parsed: list[tuple[str, PolicyFile]], models: list[str], problems: list[Problem]) -> dict[str, Principal]:
    teams: dict[str, TeamSection] = {}
    for source, policy in parsed:
        for name, team in policy.teams.items():
            if name in teams:
                problems.append(Problem(source, dotted("teams", name), "team is defined in more than one file"))
            teams[name] = team
    keys: dict[str, Principal] = {}
    names: set[str] = set()
    for source, policy in parsed:
        for i, key in enumerate(policy.keys):
            found = teams.get(key.team)
            sha = key.sha256.lower()
            if found is None:
                problems.append(Problem(source, dotted("keys", i, "team"), f"no team named {key.team!r}"))
                continue
            if sha in keys:
                problems.append(Problem(source, dotted("keys", i, "sha256"), "the same key is listed twice"))
            if key.name in names:
                problems.append(Problem(source, dotted("keys", i, "name"), f"key name {key.name!r} is used twice"))
            names.add(key.name)
            keys[sha] = _principal(key, found, models)
    return keys


def _quota(limits: Limits, overrides: set[str], team: str, key: str) -> Quota | None:
    """Team limits count on the team's counters (shared by its keys); a limit a key sets in its
    own table replaces the team's for that key and counts on the key's own counter."""

    def limit(name: str, counter: str, scale: float = 1) -> Limit | None:
        value = getattr(limits, name)
        if value is None:
            return None
        scope, owner = (f"key:{key}", f"key {key!r}") if name in overrides else (f"team:{team}", f"team {team!r}")
        return Limit(name, round(value * scale), f"{counter}:{scope}", owner)

    quota = Quota(
        rpm=limit("rpm", "rpm"),
        tpm=limit("tpm", "tpm"),
        concurrent=limit("max_concurrent", "conc"),
        day=limit("budget_usd_per_day", "usd", NANO),
        month=limit("budget_usd_per_month", "usd", NANO),
        max_tokens=limits.max_tokens,
    )
    return None if quota == Quota() else quota


def _principal(key: KeySection, team: TeamSection, models: list[str]) -> Principal:
    overrides = {k: v for k, v in key.model_dump(include=set(Limits.model_fields)).items() if v is not None}
    limits = Limits.model_validate(team.model_dump(include=set(Limits.model_fields)) | overrides)
    allowed = frozenset(m for m in models if any(fnmatch.fnmatchcase(m, pattern) for pattern in team.models))
    return Principal(
        key_name=key.name,
        team=key.team,
        admin=key.admin,
        models=allowed,
        limits=limits,
        prompts=frozenset(team.prompts) if team.prompts is not None else None,
        tools=frozenset(team.tools) if team.tools is not None else None,
        cache=team.cache,
        capture=team.capture_content,
        quota=_quota(limits, set(overrides), key.team, key.name),
        guard=Guardrails.compile(team.guardrails),
    )
