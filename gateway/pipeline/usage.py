"""Usage when the provider reported none: counted with tiktoken and marked as estimated."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway import tokens
from gateway.providers.base import Operation, Usage

_loaded: set[str] = set()  # models whose tiktoken encoding this process has loaded


async def load_encoding(model: str) -> None:
    """Loading an encoding takes ~0.5 s and ~75 MB the first time: off the event loop, and only when needed."""
    if model not in _loaded:
        await asyncio.to_thread(tokens.encoding, model)
        _loaded.add(model)


def prompt_tokens(op: Operation, body: dict[str, Any], model: str) -> int:
    if op is Operation.CHAT:
        messages = body.get("messages")
        return tokens.count_messages(messages if isinstance(messages, list) else [], model)
    return tokens.count_prompt(body.get("prompt" if op is Operation.COMPLETION else "input"), model)


async def estimate(op: Operation, body: dict[str, Any], completion: str, model: str) -> Usage:
    await load_encoding(model)
    output = tokens.count_text(completion, model) if completion else 0
    return Usage(prompt_tokens(op, body, model), output, estimated=True)
