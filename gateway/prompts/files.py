"""prompts/*.toml -> validated, compiled `FilePrompt`s. The whole directory is checked as one set:
any problem rejects the set, and the caller keeps the last good one."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from gateway.config import Config, ConfigError, Problem
from gateway.config.load import read_toml
from gateway.config.problems import dotted, from_validation
from gateway.config.watch import Signature, signature
from gateway.prompts.registry import FilePrompt, Version, compile_version
from gateway.prompts.schema import LABEL, PROMPT_ID, PromptFile, PromptSection


@dataclass(frozen=True, slots=True)
class FileSet:
    prompts: dict[str, FilePrompt]
    files: tuple[str, ...]
    signature: Signature


def prompt_dir(config: Config) -> Path:
    return config.path(config.file.prompts.dir)


def load_files(config: Config) -> FileSet:
    directory = prompt_dir(config)
    sig = signature(directory)
    models = frozenset(config.file.models)
    problems: list[Problem] = []
    prompts: dict[str, FilePrompt] = {}
    for name, mtime_ns, _ in sig:
        path = directory / name
        try:
            parsed = PromptFile.model_validate(read_toml(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        except ValidationError as exc:
            problems.extend(from_validation(str(path), exc))
            continue
        for pid, section in parsed.prompts.items():
            if pid in prompts:
                problems.append(Problem(str(path), dotted("prompts", pid), f"prompt is also defined in {prompts[pid].source}"))
                continue
            prompts[pid] = _compile(str(path), pid, section, mtime=mtime_ns / 1e9, models=models, problems=problems)
    if problems:
        raise ConfigError(problems)
    return FileSet(prompts, tuple(name for name, _, _ in sig), sig)


def _compile(
    source: str, pid: str, section: PromptSection, *, mtime: float, models: Collection[str], problems: list[Problem]
) -> FilePrompt:
    if not re.fullmatch(PROMPT_ID, pid):
        problems.append(Problem(source, dotted("prompts", pid), "a prompt id is letters, digits, '_', '.', '-' (at most 128)"))
    versions: list[Version] = []
    for i, spec in enumerate(section.versions):
        found: list[tuple[tuple[str | int, ...], str]] = []
        versions.append(compile_version(spec, i + 1, source, models, found))
        problems.extend(Problem(source, dotted("prompts", pid, "versions", i, *where), message) for where, message in found)
    for label, number in section.labels.items():
        where = dotted("prompts", pid, "labels", label)
        if not re.fullmatch(LABEL, label):
            problems.append(Problem(source, where, "a label starts with a letter: letters, digits, '_', '.', '-'"))
        if not 1 <= number <= len(versions):
            problems.append(Problem(source, where, f"no version {number} (this prompt has {len(versions)})"))
    return FilePrompt(source, tuple(versions), dict(section.labels), mtime)
