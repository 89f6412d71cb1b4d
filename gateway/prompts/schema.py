"""The shape of a prompt file (`prompts/*.toml`) and of a version pushed through the admin API."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from gateway.config.schema import Strict

PROMPT_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
LABEL = r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$"  # starts with a letter, so `@2` is always a version
Scalar = str | int | float | bool


class Message(Strict):
    role: str = Field(pattern=r"^(system|developer|user|assistant)$")
    content: str


class PromptCase(Strict):
    """One test case of a version: variables to render with, and what the answer must satisfy."""

    variables: dict[str, Scalar] = {}
    contains: str | None = None
    not_contains: str | None = None
    regex: str | None = None
    json_schema: dict[str, Any] | None = None
    max_latency_ms: float | None = Field(None, gt=0)
    max_cost_usd: float | None = Field(None, ge=0)


class VersionSpec(Strict):
    """Everything a version is: its content hash is taken over exactly these fields."""

    model: str = Field(min_length=1)
    params: dict[str, Any] = {}
    variables: list[str] = []
    messages: list[Message] = Field(min_length=1)
    tests: list[PromptCase] = []


class PromptSection(Strict):
    labels: dict[str, int] = {}
    versions: list[VersionSpec] = Field(min_length=1)


class PromptFile(Strict):
    prompts: dict[str, PromptSection] = {}


class LabelMove(Strict):
    version: int = Field(ge=1)
    force: bool = False
