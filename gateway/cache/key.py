"""Cache keys: one hash over everything that changes an answer, and nothing that does not.

The request body is canonicalised once (orjson with sorted keys) after dropping the fields that do
not change the output: `model` (replaced by the gateway model name, since the deployment is picked
at random among equivalent targets), `stream` and `stream_options` (a cached answer is replayed in
either form), and `user`, `metadata`, `store` (bookkeeping). Every other field, including ones this
gateway does not know, is part of the key: an unknown field may change the answer, so sharing on it
would be wrong, while splitting on it only costs a miss. Sorting keys also sorts the properties of a
JSON schema in `response_format` or `tools`; property order in a schema is not part of the key.

The tenant scope is a prefix of the key, outside the hash, so that two teams can never share an
entry, whatever their bodies: `t:<team>:<hash>`, or `shared:<hash>` for models with
`cache_scope = "shared"` (`shared:["fallback",...]:<hash>` when the model has fallbacks: teams that
may use different ones of them do not share).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from gateway.providers.base import Operation

VERSION = "2"  # bump when the stored entry format changes: old entries are then never read
IGNORED = frozenset({"model", "stream", "stream_options", "user", "metadata", "store"})
FLOATS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def deterministic(op: Operation, body: dict[str, Any]) -> bool:
    """Is the answer meant to be repeatable: temperature 0 or a seed (embeddings always are)?"""
    if op is Operation.EMBEDDINGS:
        return True
    temperature = body.get("temperature")
    return (temperature == 0 and not isinstance(temperature, bool)) or body.get("seed") is not None


def digest(op: Operation, model: str, body: dict[str, Any], prompt_hash: str | None = None) -> str:
    fields = {k: v for k, v in body.items() if k not in IGNORED}
    for name in FLOATS:  # 0 and 0.0 ask for the same thing
        value = fields.get(name)
        if type(value) is int:
            fields[name] = float(value)
    material = orjson.dumps([VERSION, op.value, model, prompt_hash, fields], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(material).hexdigest()


def scope(team: str, shared: bool, fallbacks: tuple[str, ...] = ()) -> str:
    """A team's own entries; or, for a shared model, the entries of every team whose route to it
    reaches the same fallbacks (`ModelRoute.within`), so that an answer a fallback gave is never
    read by a team that may not use that fallback."""
    if not shared:
        return "t:" + team
    return "shared:" + orjson.dumps(fallbacks).decode() if fallbacks else "shared"


def cache_key(scope_: str, op: Operation, model: str, body: dict[str, Any], prompt_hash: str | None = None) -> str:
    return scope_ + ":" + digest(op, model, body, prompt_hash)
