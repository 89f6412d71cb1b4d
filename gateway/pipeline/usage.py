"""Counting a request's tokens with tiktoken: its prompt for limits and guardrails, and usage when
the provider reported none (marked as estimated).

Nothing here grows with the input on the event loop: a prompt or completion small enough for
`tokens.fits_on_loop` (told by a look at a bounded number of items) is counted inline, well under a
millisecond; anything larger goes to a worker thread, where tiktoken works without the GIL. The counting is
done by the record's `tokens.Tokenizer`, the process's one, which the journey puts on the record.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.pipeline.record import Record
from gateway.providers.base import Operation, Usage
from gateway.tokens import ON_LOOP_CHARS, Tokenizer, fits_on_loop


def prompt_of(op: Operation, body: dict[str, Any]) -> Any:
    """What the prompt tokens of a request are counted over: its messages, prompt or input."""
    return body.get("messages" if op is Operation.CHAT else "prompt" if op is Operation.COMPLETION else "input")


def prompt_tokens(tokenizer: Tokenizer, op: Operation, body: dict[str, Any], model: str) -> int:
    prompt = prompt_of(op, body)
    if op is Operation.CHAT:
        return tokenizer.count_messages(prompt if isinstance(prompt, list) else [], model)
    return tokenizer.count_prompt(prompt, model)


async def count_prompt(op: Operation, body: dict[str, Any], model: str, record: Record) -> int:
    """The request's prompt tokens, counted once per encoding and kept on the record (the guardrail's
    cap, the limits and charging all ask) with the record's tokenizer: inline when small, else in a
    worker thread (the body is this request's own and nothing else touches it meanwhile)."""
    tokenizer = record.tokenizer
    await tokenizer.load(model)
    known = counted(record, model)
    if known is not None:
        return known
    if fits_on_loop(prompt_of(op, body)):
        count = prompt_tokens(tokenizer, op, body, model)
    else:
        count = await asyncio.to_thread(prompt_tokens, tokenizer, op, body, model)
    record.prompt_count, record.prompt_encoding = count, tokenizer.encoding(model).name
    return count


def counted(record: Record, model: str) -> int | None:
    """The record's prompt count if it was made with `model`'s encoding (loaded: see `Tokenizer.load`)."""
    if record.prompt_count is None or record.tokenizer.encoding(model).name != record.prompt_encoding:
        return None
    return record.prompt_count


async def count_text(tokenizer: Tokenizer, text: str, model: str) -> int:
    await tokenizer.load(model)
    if len(text) <= ON_LOOP_CHARS:
        return tokenizer.count_text(text, model)
    return await asyncio.to_thread(tokenizer.count_text, text, model)


async def estimate(op: Operation, body: dict[str, Any], completion: str, model: str, record: Record) -> Usage:
    output = await count_text(record.tokenizer, completion, model) if completion else 0
    return Usage(await count_prompt(op, body, model, record), output, estimated=True)
