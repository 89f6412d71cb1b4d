"""Applying a prompt reference to a chat request body (SPEC section 4).

The result is an ordinary chat body: the version's rendered messages, then the client's messages;
the version's params, overridden by any the client sent; the model the version pins, whatever the
client named. The `prompt` field is removed, so nothing of the reference goes upstream.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import BadRequest, PermissionDenied
from gateway.prompts.registry import Registry, Resolved, Version
from gateway.providers.base import Operation

PREFIX = "prompt:"
_FIELDS = frozenset({"id", "label", "version", "variables"})
_REPLACED = frozenset({"model", "messages", "prompt"})


def referenced(body: dict[str, Any]) -> bool:
    """The hot-path test: does this request name a prompt at all?"""
    model = body.get("model")
    return (isinstance(model, str) and model.startswith(PREFIX)) or isinstance(body.get("prompt"), dict)


def apply(body: dict[str, Any], registry: Registry, allowed: frozenset[str] | None, op: Operation) -> tuple[dict[str, Any], Resolved]:
    if op is not Operation.CHAT:
        raise BadRequest("Prompt references are served on /v1/chat/completions only.", param="prompt", code="prompt_not_supported")
    prompt_id, label, number, variables = reference(body)
    if allowed is not None and prompt_id not in allowed:
        raise PermissionDenied(f"This key may not use the prompt `{prompt_id}`.", param="prompt", code="prompt_not_allowed")
    resolved = registry.resolve(prompt_id, label, number)
    version = resolved.version
    values = _values(prompt_id, version, variables)
    messages: list[Any] = [{"role": role, "content": template.render(values)} for role, template in version.templates]
    client = body.get("messages")
    if client is not None and not isinstance(client, list):
        raise BadRequest("'messages' must be an array.", param="messages", code="invalid_type")
    rest = {k: v for k, v in body.items() if k not in _REPLACED}
    return {**version.spec.params, **rest, "model": version.spec.model, "messages": messages + (client or [])}, resolved


def reference(body: dict[str, Any]) -> tuple[str, str | None, int | None, dict[str, Any]]:
    """(id, label, version, variables) from the `prompt` field and/or the `prompt:ID@REF` model."""
    field = body.get("prompt", {})
    if not isinstance(field, dict):
        raise BadRequest("'prompt' must be an object.", param="prompt", code="invalid_type")
    unknown = sorted(field.keys() - _FIELDS)
    if unknown:
        message = f"Unknown field 'prompt.{unknown[0]}' (expected id, label, version, variables)."
        raise BadRequest(message, param="prompt", code="invalid_value")
    variables = field.get("variables", {})
    if not isinstance(variables, dict):
        raise BadRequest("'prompt.variables' must be an object.", param="prompt.variables", code="invalid_type")
    model = body.get("model")
    if isinstance(model, str) and model.startswith(PREFIX):
        named, _, ref = model.removeprefix(PREFIX).partition("@")
        if "label" in field or "version" in field or field.get("id", named) != named:
            raise BadRequest("Name the prompt once: in the model shorthand or in 'prompt', not both.", param="prompt", code="invalid_value")
        return named, (None if ref.isdigit() else ref or None), (int(ref) if ref.isdigit() else None), variables
    prompt_id, label, number = field.get("id"), field.get("label"), field.get("version")
    if not isinstance(prompt_id, str) or not prompt_id:
        message = "'prompt.id' is required (or use the model 'prompt:ID@LABEL')."
        raise BadRequest(message, param="prompt.id", code="missing_required_parameter")
    if label is not None and number is not None:
        raise BadRequest("Give 'prompt.label' or 'prompt.version', not both.", param="prompt", code="invalid_value")
    if label is not None and not isinstance(label, str):
        raise BadRequest("'prompt.label' must be a string.", param="prompt.label", code="invalid_type")
    if number is not None and (not isinstance(number, int) or isinstance(number, bool) or number < 1):
        raise BadRequest("'prompt.version' must be a positive integer.", param="prompt.version", code="invalid_type")
    return prompt_id, label, number, variables


def _values(prompt_id: str, version: Version, given: dict[str, Any]) -> dict[str, str]:
    for name in version.spec.variables:
        if name not in given:
            raise BadRequest(
                f"Missing prompt variable `{name}` (prompt `{prompt_id}` version {version.number}).",
                param="prompt.variables",
                code="missing_prompt_variable",
            )
    values = {}
    for name, value in given.items():
        if name not in version.declared:
            declared = ", ".join(version.spec.variables) or "none"
            raise BadRequest(
                f"Unknown prompt variable `{name}`: prompt `{prompt_id}` version {version.number} declares {declared}.",
                param="prompt.variables",
                code="unknown_prompt_variable",
            )
        values[name] = _text(name, value)
    return values


def _text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise BadRequest(f"Prompt variable `{name}` must be a string, number or boolean.", param="prompt.variables", code="invalid_type")
