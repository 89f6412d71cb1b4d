"""The immutable registry snapshot every request resolves against, and how one is built.

A `Registry` merges two sources: versions defined by prompt files (version N is the file's N-th
entry) and versions pushed at runtime (numbered by the store above the file's count). A pushed
number that a file later also defines must hold the same content, or the file set is rejected:
published versions never change. A label points where it was last put: the file's value dates from
the file's modification time, a runtime move from the move, and the later one wins (so a runtime
move stands until the file is next edited, and a deploy that rewrites the file re-asserts it).

The service swaps whole snapshots with one assignment; a request reads the attribute once, so it
never sees half of a change.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import jsonschema
import orjson

from gateway.config.problems import ConfigError, Problem, dotted
from gateway.errors import NotFound
from gateway.prompts.schema import VersionSpec
from gateway.prompts.store import StoreState
from gateway.prompts.template import NAME, Template, TemplateError, parse

DEFAULT_LABEL = "production"
RESERVED_PARAMS = frozenset({"model", "messages", "prompt", "stream"})
RUNTIME = "runtime"
Found = list[tuple[tuple[str | int, ...], str]]  # (path inside a version, what is wrong)


@dataclass(frozen=True, slots=True)
class Version:
    number: int
    spec: VersionSpec
    hash: str
    templates: tuple[tuple[str, Template], ...]  # (role, content) per message
    declared: frozenset[str]
    source: str  # the file that defines it, or RUNTIME


@dataclass(frozen=True, slots=True)
class Label:
    version: int
    at: float  # when it was put there (file mtime or move time)
    source: str  # a file path, or RUNTIME
    forced: bool = False


@dataclass(frozen=True, slots=True)
class Prompt:
    id: str
    versions: Mapping[int, Version]  # in number order
    labels: Mapping[str, Label]


@dataclass(frozen=True, slots=True)
class FilePrompt:
    source: str
    versions: tuple[Version, ...]
    labels: Mapping[str, int]
    mtime: float


@dataclass(frozen=True, slots=True)
class Resolved:
    prompt_id: str
    version: Version
    label: str | None  # None when the reference named a version number


@dataclass(frozen=True, slots=True)
class Registry:
    prompts: Mapping[str, Prompt] = field(default_factory=dict)

    def prompt(self, prompt_id: str) -> Prompt:
        prompt = self.prompts.get(prompt_id)
        if prompt is None:
            raise NotFound(f"The prompt `{prompt_id}` does not exist.", param="prompt", code="prompt_not_found")
        return prompt

    def resolve(self, prompt_id: str, label: str | None = None, version: int | None = None) -> Resolved:
        prompt = self.prompt(prompt_id)
        if version is None:
            label = label or DEFAULT_LABEL
            pointer = prompt.labels.get(label)
            if pointer is None:
                raise NotFound(f"The prompt `{prompt_id}` has no label `{label}`.", param="prompt", code="prompt_not_found")
            version = pointer.version
        found = prompt.versions.get(version)
        if found is None:
            raise NotFound(f"The prompt `{prompt_id}` has no version {version}.", param="prompt", code="prompt_not_found")
        return Resolved(prompt_id, found, label)

    def lookup(self, prompt_id: str, ref: str | None) -> Resolved:
        """Resolve `ref` as written after `@`: digits are a version number, anything else a label."""
        if ref is not None and ref.isdigit():
            return self.resolve(prompt_id, version=int(ref))
        return self.resolve(prompt_id, label=ref)


def content_hash(spec: VersionSpec) -> str:
    return hashlib.sha256(canonical(spec)).hexdigest()


def canonical(spec: VersionSpec) -> bytes:
    return orjson.dumps(spec.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


def compile_version(spec: VersionSpec, number: int, source: str, models: Collection[str] | None, problems: Found) -> Version:
    """Check a version and parse its templates. Problems are appended as (path inside the version, message)."""
    declared = frozenset(spec.variables)
    for i, name in enumerate(spec.variables):
        if not NAME.fullmatch(name):
            problems.append((("variables", i), f"{name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"))
        elif spec.variables.index(name) != i:
            problems.append((("variables", i), f"{name!r} is declared twice"))
    templates = []
    for i, message in enumerate(spec.messages):
        try:
            templates.append((message.role, parse(message.content, declared)))
        except TemplateError as exc:
            problems.append((("messages", i, "content"), str(exc)))
    if models is not None and spec.model not in models:
        problems.append((("model",), f"no model named {spec.model!r} in the config"))
    for key in sorted(RESERVED_PARAMS & spec.params.keys()):
        problems.append((("params", key), "is not a parameter a prompt may pin"))
    for i, case in enumerate(spec.tests):
        _check_case(i, set(case.variables), declared, regex=case.regex, schema=case.json_schema, problems=problems)
    return Version(number, spec, content_hash(spec), tuple(templates), declared, source)


def _check_case(i: int, given: set[str], declared: frozenset[str], *, regex: str | None, schema: object, problems: Found) -> None:
    for name in sorted(declared - given):
        problems.append((("tests", i, "variables"), f"variable {name!r} is missing"))
    for name in sorted(given - declared):
        problems.append((("tests", i, "variables", name), "is not a declared variable"))
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as exc:
            problems.append((("tests", i, "regex"), f"invalid regular expression: {exc}"))
    if isinstance(schema, dict):
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            problems.append((("tests", i, "json_schema"), f"invalid JSON schema: {exc.message}"))


def build(files: Mapping[str, FilePrompt], stored: StoreState, models: Collection[str] | None = None) -> Registry:
    """Merge file prompts with the store's versions and labels; raise ConfigError on a conflict."""
    problems: list[Problem] = []
    prompts = {}
    for pid in sorted(files.keys() | stored.versions.keys() | stored.labels.keys()):
        prompt = _merge(pid, files.get(pid), stored, problems)
        if prompt.versions:
            prompts[pid] = prompt
    if problems:
        raise ConfigError(problems)
    return Registry(prompts)


def _merge(pid: str, file: FilePrompt | None, stored: StoreState, problems: list[Problem]) -> Prompt:
    versions: dict[int, Version] = {v.number: v for v in file.versions} if file else {}
    for pushed in stored.versions.get(pid, ()):
        mine = versions.get(pushed.number)
        if mine is None:
            spec = VersionSpec.model_validate_json(pushed.spec)
            versions[pushed.number] = compile_version(spec, pushed.number, RUNTIME, None, [])
        elif mine.hash != pushed.hash and file is not None:
            where = dotted("prompts", pid, "versions", pushed.number - 1)
            message = f"version {pushed.number} was pushed at runtime with other content; versions never change"
            problems.append(Problem(file.source, where, message))
    labels = {name: Label(n, file.mtime, file.source) for name, n in file.labels.items()} if file else {}
    for name, move in stored.labels.get(pid, {}).items():
        current = labels.get(name)
        if (current is None or move.moved_at >= current.at) and move.version in versions:
            labels[name] = Label(move.version, move.moved_at, RUNTIME, move.forced)
    return Prompt(pid, dict(sorted(versions.items())), labels)
