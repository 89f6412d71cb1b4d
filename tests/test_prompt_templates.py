"""`{{name}}` templates and version validation: substitution only, everything else rejected at load."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import ConfigError
from gateway.config.load import build as build_config
from gateway.prompts.files import load_files
from gateway.prompts.registry import Found, compile_version, content_hash
from gateway.prompts.schema import VersionSpec
from gateway.prompts.template import Template, TemplateError, Var, parse

DECLARED = frozenset({"product", "question"})


def test_parse_once_into_parts_and_render() -> None:
    t = parse("Help with {{product}}: {{ question }}!", DECLARED)
    assert t.parts == ("Help with ", Var("product"), ": ", Var("question"), "!")
    assert t.names == DECLARED
    assert t.render({"product": "Acme", "question": "why?"}) == "Help with Acme: why?!"


def test_values_are_never_parsed_again() -> None:
    t = parse("{{product}}", DECLARED)
    assert t.render({"product": "{{question}} {% include 'x' %}"}) == "{{question}} {% include 'x' %}"


@pytest.mark.parametrize(
    "text",
    [
        "{{__class__}}",  # undeclared
        "{{ product.__class__ }}",
        "{{ product.__class__.__mro__[1].__subclasses__() }}",
        "{{ product() }}",
        "{{ product|upper }}",
        "{{ 7*7 }}",
        "{{ product['x'] }}",
        "{% include 'secrets.txt' %}",
        "{# comment #}",
        "{% for x in product %}{{x}}{% endfor %}",
        "unclosed {{product",
        "{{}}",
    ],
)
def test_anything_but_a_declared_name_is_rejected(text: str) -> None:
    with pytest.raises(TemplateError):
        parse(text, DECLARED)


def test_a_declared_dunder_name_is_only_a_name() -> None:
    t = parse("{{__class__}}", frozenset({"__class__"}))
    assert t.render({"__class__": "plain value"}) == "plain value"


def test_single_braces_and_stray_closers_are_literal() -> None:
    text = 'Answer as {"ok": true}; }} stays'
    assert parse(text, DECLARED) == Template((text,))


@given(st.text().filter(lambda s: "{{" not in s and "{%" not in s and "{#" not in s))
def test_text_without_markers_renders_unchanged(text: str) -> None:
    assert parse(text, DECLARED).render({}) == text


def spec(**overrides: object) -> VersionSpec:
    base: dict[str, object] = {
        "model": "gpt-4o-mini",
        "variables": ["product"],
        "messages": [{"role": "system", "content": "About {{product}}."}],
    }
    return VersionSpec.model_validate(base | overrides)


def problems_of(s: VersionSpec) -> list[str]:
    found: Found = []
    compile_version(s, 1, "x", ["gpt-4o-mini"], found)
    return [f"{'.'.join(map(str, where))}: {message}" for where, message in found]


def test_a_valid_version_has_no_problems_and_a_stable_hash() -> None:
    assert problems_of(spec()) == []
    assert content_hash(spec()) == content_hash(spec()) != content_hash(spec(params={"temperature": 0}))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"variables": ["product", "9lives"]}, "variables.1: '9lives' is not a variable name"),
        ({"variables": ["product", "product"]}, "variables.1: 'product' is declared twice"),
        ({"messages": [{"role": "user", "content": "{{nope}}"}]}, "messages.0.content: variable 'nope' is not declared"),
        ({"model": "gpt-9"}, "model: no model named 'gpt-9'"),
        ({"params": {"model": "x"}}, "params.model: is not a parameter a prompt may pin"),
        ({"tests": [{"variables": {}}]}, "tests.0.variables: variable 'product' is missing"),
        ({"tests": [{"variables": {"product": "a", "extra": "b"}}]}, "tests.0.variables.extra: is not a declared variable"),
        ({"tests": [{"variables": {"product": "a"}, "regex": "("}]}, "tests.0.regex: invalid regular expression"),
        ({"tests": [{"variables": {"product": "a"}, "json_schema": {"type": 12}}]}, "tests.0.json_schema: invalid JSON schema"),
    ],
)
def test_version_problems_name_their_path(overrides: dict[str, object], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems_of(spec(**overrides))), problems_of(spec(**overrides))


def load_dir(tmp_path: Path, files: dict[str, str]) -> None:
    (tmp_path / "prompts").mkdir(parents=True)
    for name, text in files.items():
        (tmp_path / "prompts" / name).write_text(text)
    raw = {"providers": {"demo": {"kind": "mock"}}, "models": {"gpt-4o-mini": {"targets": [{"provider": "demo", "model": "echo"}]}}}
    load_files(build_config(raw, "c.toml", tmp_path))


def test_a_prompt_file_problem_is_one_line_with_file_and_dotted_path(tmp_path: Path) -> None:
    text = """
[prompts.bot]
labels = { production = 3 }
[[prompts.bot.versions]]
model = "gpt-4o-mini"
messages = [{ role = "user", content = "{{ __class__ }}" }]
"""
    with pytest.raises(ConfigError) as caught:
        load_dir(tmp_path, {"bot.toml": text})
    lines = str(caught.value).splitlines()
    source = str(tmp_path / "prompts" / "bot.toml")
    assert f"{source}: prompts.bot.versions[0].messages[0].content: variable '__class__' is not declared in `variables`" in lines
    assert f"{source}: prompts.bot.labels.production: no version 3 (this prompt has 1)" in lines


def test_unknown_keys_and_duplicate_ids_across_files_are_rejected(tmp_path: Path) -> None:
    one = '[[prompts.bot.versions]]\nmodel = "gpt-4o-mini"\nmessages = [{ role = "user", content = "hi" }]\n'
    with pytest.raises(ConfigError) as caught:
        load_dir(tmp_path, {"a.toml": one, "b.toml": one + "temperature = 1\n"})
    text = str(caught.value)
    assert "b.toml: prompts.bot.versions[0].temperature: unknown key" in text
    with pytest.raises(ConfigError) as again:
        load_dir(tmp_path / "two", {"a.toml": one, "b.toml": one})
    assert "b.toml: prompts.bot: prompt is also defined in" in str(again.value)
