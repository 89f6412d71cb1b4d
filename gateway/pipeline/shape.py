"""The OpenAI request shapes the gateway reads, checked once at admission.

Every later stage (token counting, routing, guardrails, the provider translations, the cache key,
trace capture) may then read `messages`, `tools`, `tool_calls`, `n`, `stop`... without guarding
each access: a wrong type is a 400 here, naming the field's path in `param`
(`messages[0].tool_calls[1].function.name`), never an exception somewhere downstream.

Cheap on purpose, as it runs on every request: only the fields a body carries are looked at (the
loop runs over its own keys), null counts as absent as OpenAI has it, and the path of a bad field is
put together only on the way out of a failure (`Wrong.path`), so a plain chat request pays a few
dict lookups and one pass over its messages. Values (ranges, budgets) are other stages' business;
this is about types. Fields the gateway does not read pass through unchecked, for the provider to judge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.errors import BadRequest

Check = Callable[[Any], object]

_NO_PARAMETERS: dict[str, Any] = {}  # never changed: only its type is read
ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))


class Wrong(Exception):
    """A field of the wrong type; each container it was found in adds its step to `path`, innermost first."""

    def __init__(self, wanted: str, at: str = "", code: str = "invalid_type") -> None:
        self.wanted, self.code = wanted, code
        self.path = [at] if at else []


def _string(value: Any) -> None:
    if type(value) is not str:
        raise Wrong("a string")


def _integer(value: Any) -> None:
    if type(value) is not int:  # orjson makes exact types: a bool is not an int here
        raise Wrong("an integer")


def _number(value: Any) -> None:
    if type(value) is not float and type(value) is not int:
        raise Wrong("a number")


def _boolean(value: Any) -> None:
    if type(value) is not bool:
        raise Wrong("a boolean")


def _object(value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise Wrong("an object")
    return value


def _list(value: Any) -> list[Any]:
    if type(value) is not list:
        raise Wrong("a list")
    return value


def _at(data: dict[str, Any], key: str, check: Check, optional: bool = False) -> None:
    """check(data[key]), naming the key on failure; a null or absent optional key passes."""
    value = data.get(key)
    if value is None and optional:
        return
    try:
        check(value)
    except Wrong as wrong:
        wrong.path.append("." + key)
        raise


def _each(items: Any, check: Check) -> None:
    """check() each item of a list, naming the failing item's index."""
    item = None
    try:
        for item in _list(items):
            check(item)
    except Wrong as wrong:
        if type(items) is list:
            wrong.path.append(f"[{next(i for i, x in enumerate(items) if x is item)}]")
        raise


def _call(value: Any) -> None:
    if type(value) is dict and type(value.get("id")) is str and type(value.get("type")) is str:
        function = value.get("function")
        if type(function) is dict and type(function.get("name")) is str and type(function.get("arguments")) is str:
            return  # the usual call, checked in one expression; the steps below name what is wrong
    call = _object(value)
    _at(call, "id", _string)
    _at(call, "type", _string)
    _at(call, "function", _called)


def _called(value: Any) -> None:
    function = _object(value)
    _at(function, "name", _string)
    _at(function, "arguments", _string)


def _part(value: Any) -> None:
    part = _object(value)
    kind = part.get("type")
    _at(part, "type", _string)
    if kind == "text":
        _at(part, "text", _string)


def _content(value: Any) -> None:
    if type(value) is not str:
        _each(value, _part)


def _message(value: Any) -> None:
    message = _object(value)
    role = message.get("role")
    if type(role) is not str or role not in ROLES:
        raise Wrong("one of " + ", ".join(sorted(ROLES)), ".role", "invalid_value")
    if len(message) == 2 and type(message.get("content")) is str:
        return  # the usual message: role and text
    _at(message, "content", _content, optional=True)
    _at(message, "tool_calls", _tool_calls, optional=True)
    _at(message, "name", _string, optional=True)
    _at(message, "tool_call_id", _string, optional=True)


def _tool_calls(value: Any) -> None:
    _each(value, _call)


def _messages(value: Any) -> None:
    if type(value) is list and not value:
        raise Wrong("a non-empty list")
    _each(value, _message)


def _function(value: Any) -> None:
    function = _object(value)
    _at(function, "name", _string)
    _at(function, "description", _string, optional=True)
    _at(function, "parameters", _object, optional=True)


def _tool(value: Any) -> None:
    if type(value) is dict and value.get("type") == "function":
        function = value.get("function")
        if (
            type(function) is dict
            and type(function.get("name")) is str
            and type(function.get("description", "")) is str
            and type(function.get("parameters", _NO_PARAMETERS)) is dict
        ):
            return  # the usual function tool, checked in one expression; the steps below name what is wrong
    tool = _object(value)
    kind = tool.get("type")
    _at(tool, "type", _string)
    if kind == "function" or "function" in tool:
        _at(tool, "function", _function)


def _tools(value: Any) -> None:
    _each(value, _tool)


def _tool_choice(value: Any) -> None:
    if type(value) is str:
        return
    choice = _object(value)
    _at(choice, "type", _string)
    _at(choice, "function", lambda f: _at(_object(f), "name", _string), optional=True)


def _n(value: Any) -> None:
    if type(value) is not int or value < 1:
        raise Wrong("an integer of at least 1", code="invalid_value")


def _stop(value: Any) -> None:
    if type(value) is not str:
        _each(value, _string)


def _token_ids(value: Any) -> None:
    if type(value) is not list or any(type(t) is not int for t in value):
        raise Wrong("a list of token ids")


def _inputs(value: Any) -> None:
    """A completion's `prompt` or an embedding's `input`: a string, or a non-empty list of strings,
    of token ids, or of token id lists."""
    if type(value) is str:
        return
    items = _list(value)
    if not items:
        raise Wrong("a string or a non-empty list")
    first = type(items[0])
    if first is str or first is int:
        if any(type(item) is not first for item in items):
            raise Wrong("a string, or a list of strings or of token ids")
        return
    _each(items, _token_ids)


_COMMON: dict[str, Check] = {
    "stream": _boolean,
    "stream_options": _object,
    "user": _string,
    "encoding_format": _string,
    "dimensions": _integer,
}
_GENERATION: dict[str, Check] = {
    **_COMMON,
    "n": _n,
    "stop": _stop,
    "max_tokens": _integer,
    "max_completion_tokens": _integer,
    "temperature": _number,
    "top_p": _number,
    "frequency_penalty": _number,
    "presence_penalty": _number,
    "seed": _integer,
    "reasoning_effort": _string,
}
CHECKS: dict[str, dict[str, Check]] = {  # by operation: the fields it reads, and what they must be
    "chat": {
        **_GENERATION,
        "messages": _messages,
        "tools": _tools,
        "tool_choice": _tool_choice,
        "parallel_tool_calls": _boolean,
        "response_format": _object,
    },
    "text_completion": {**_GENERATION, "prompt": _inputs},
    "embeddings": {**_COMMON, "input": _inputs},
}


def check(body: dict[str, Any], operation: str) -> None:
    """A 400 naming the first field (by its path) the gateway could not read as OpenAI defines it."""
    checks = CHECKS[operation]
    for key, value in body.items():
        if value is not None and (field_check := checks.get(key)) is not None:
            try:
                field_check(value)
            except Wrong as wrong:
                param = key + "".join(reversed(wrong.path))
                raise BadRequest(f"'{param}' must be {wrong.wanted}.", param=param, code=wrong.code) from None
