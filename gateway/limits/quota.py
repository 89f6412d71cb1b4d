"""A principal's limits, compiled at policy load: each limit with the counter it is counted on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limit:
    name: str  # the policy field: "rpm", "budget_usd_per_day", ... (named in a 429's message)
    value: int  # units per minute, leases, or nano-USD per period
    counter: str  # e.g. "rpm:team:support"; a key that overrides the limit counts on "rpm:key:<name>"
    owner: str  # "team 'support'" or "key 'support-app'", for messages


@dataclass(frozen=True, slots=True)
class Quota:
    rpm: Limit | None = None
    tpm: Limit | None = None
    concurrent: Limit | None = None
    day: Limit | None = None
    month: Limit | None = None
    max_tokens: int | None = None  # cap on max_tokens / max_completion_tokens; filled in when absent

    @property
    def counts_tokens(self) -> bool:
        return self.tpm is not None or self.day is not None or self.month is not None
