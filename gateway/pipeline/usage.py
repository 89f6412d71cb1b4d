"""Counting a request's tokens with tiktoken: its prompt for limits and guardrails, and usage when
the provider reported none (marked as estimated).

Nothing here grows with the input on the event loop: a prompt or completion small enough for
`tokens.fits_on_loop` (told by a look at a bounded number of items) is counted inline, well under a
millisecond; anything larger goes to a worker thread, where tiktoken works without the GIL.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway import tokens
from gateway.pipeline.record import Record
from gateway.providers.base import Operation, Usage

_loaded: set[str] = set()  # models whose tiktoken encoding this process has loaded


async def load_encoding(model: str) -> None:
    """Loading an encoding takes ~0.5 s and ~75 MB the first time: off the event loop, and only when needed."""
    if model not in _loaded:
        await asyncio.to_thread(tokens.encoding, model)
        _loaded.add(model)


def prompt_of(op: Operation, body: dict[str, Any]) -> Any:
    """What the prompt tokens of a request are counted over: its messages, prompt or input."""
    return body.get("messages" if op is Operation.CHAT else "prompt" if op is Operation.COMPLETION else "input")


def prompt_tokens(op: Operation, body: dict[str, Any], model: str) -> int:
    prompt = prompt_of(op, body)
    if op is Operation.CHAT:
        return tokens.count_messages(prompt if isinstance(prompt, list) else [], model)
    return tokens.count_prompt(prompt, model)


async def count_prompt(op: Operation, body: dict[str, Any], model: str, record: Record) -> int:
    """The request's prompt tokens, counted once per encoding and kept on the record (the guardrail's
    cap, the limits and charging all ask): inline when small, else in a worker thread (the body is
    this request's own and nothing else touches it meanwhile)."""
    await load_encoding(model)
    known = counted(record, model)
    if known is not None:
        return known
    if tokens.fits_on_loop(prompt_of(op, body)):
        count = prompt_tokens(op, body, model)
    else:
        count = await asyncio.to_thread(prompt_tokens, op, body, model)
    record.prompt_count, record.prompt_encoding = count, tokens.encoding(model).name
    return count


def counted(record: Record, model: str) -> int | None:
    """The record's prompt count if it was made with `model`'s encoding (loaded: see `load_encoding`)."""
    if record.prompt_count is None or tokens.encoding(model).name != record.prompt_encoding:
        return None
    return record.prompt_count


async def count_text(text: str, model: str) -> int:
    await load_encoding(model)
    if len(text) <= tokens.ON_LOOP_CHARS:
        return tokens.count_text(text, model)
    return await asyncio.to_thread(tokens.count_text, text, model)


async def estimate(op: Operation, body: dict[str, Any], completion: str, model: str, record: Record) -> Usage:
    output = await count_text(completion, model) if completion else 0
    return Usage(await count_prompt(op, body, model, record), output, estimated=True)
