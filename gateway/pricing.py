"""What a request cost, in USD, from its usage and a price resolved once at config load.

A deployment's price is, in order: its target's `price`, its model's `price`, the bundled table
(`data/prices.toml`, list prices as of the date it states) by upstream model name, or none
(unpriced: cost 0 and the record says so). Table lookup is exact first, then the longest listed
prefix that ends at a "-", "@" or ":" of the name, so dated snapshots find their family without a
row each; a vendor prefix before the last "/" is ignored.

A price may also state `max_output_tokens`, the longest answer the model can give: budgets reserve
that much output for a request that sets no cap of its own (`gateway/pipeline/limit.py`).

`prompt_tokens` includes cached and cache-write tokens (OpenAI's convention, which the provider
modules follow), so those are billed at their own rates and the rest at the input rate.
"""

from __future__ import annotations

import importlib.resources
import tomllib
from collections.abc import Mapping

from gateway.config.schema import Price
from gateway.providers.base import Usage

BOUNDARIES = "-@:"


def load_table(text: str | None = None) -> dict[str, Price]:
    """The bundled table (or `text` in its format), flattened to model name -> price."""
    if text is None:
        text = (importlib.resources.files("gateway") / "data" / "prices.toml").read_text()
    table: dict[str, Price] = {}
    for vendor, rows in tomllib.loads(text).items():
        for name, row in rows.items():
            if name in table:
                raise ValueError(f"prices: {vendor}.{name} is listed twice")
            table[name] = Price.model_validate(row)
    return table


def lookup(table: Mapping[str, Price], model: str) -> Price | None:
    name = model.rsplit("/", 1)[-1]
    if name in table:
        return table[name]
    for end in range(len(name) - 1, 0, -1):
        if name[end] in BOUNDARIES and name[:end] in table:
            return table[name[:end]]
    return None


def resolve(target: Price | None, model: Price | None, table: Mapping[str, Price], upstream_model: str) -> Price | None:
    """The deployment's price. An override that does not state `max_output_tokens` keeps the table's
    for the same upstream model: a negotiated rate does not change how long an answer may be."""
    listed = lookup(table, upstream_model)
    price = target or model
    if price is None:
        return listed
    if price.max_output_tokens is None and listed is not None and listed.max_output_tokens is not None:
        return price.model_copy(update={"max_output_tokens": listed.max_output_tokens})
    return price


def cost_usd(price: Price | None, usage: Usage) -> float:
    if price is None:
        return 0.0
    cached = usage.cached_tokens
    written = usage.cache_write_tokens
    fresh = max(0, usage.prompt_tokens - cached - written)
    cached_rate = price.input_per_million if price.cached_input_per_million is None else price.cached_input_per_million
    write_rate = price.input_per_million if price.cache_write_per_million is None else price.cache_write_per_million
    total = (
        fresh * price.input_per_million + cached * cached_rate + written * write_rate + usage.completion_tokens * price.output_per_million
    )
    return round(total / 1_000_000, 10)  # the header's precision; float noise below it means nothing
