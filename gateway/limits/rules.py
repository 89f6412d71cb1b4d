"""The arithmetic of limits, as pure functions: the memory backend runs them, `admit.lua` and
`settle.lua` run the same steps inside Redis, and the property tests check them directly.

Times are milliseconds. Money is integer nano-dollars (1e-9 USD), so sums are exact.

- Rates (rpm, tpm) use GCRA, a token bucket kept as one number: the bucket's "theoretical arrival
  time" `tat`. A limit L per period P refills one unit every P/L ms and holds at most L units, so a
  burst of L is admitted at once and then one unit per P/L. A request costing `cost` units is
  admitted when `max(tat, now) + cost*P/L - now <= P`; otherwise it may retry after exactly the
  excess, which is what Retry-After says. Settling a tpm reservation moves `tat` by the difference
  between the tokens used and the tokens reserved.
- Budgets hold `spent` and `reserved` per period (UTC day or month). A request is admitted only if
  `spent + reserved + its worst-case cost <= budget`, that cost being at least one nano-dollar (so
  once the budget is spent nothing more starts); on completion its reservation is released and
  its real cost added. As long as no request costs more than it reserved, `spent` never exceeds the
  budget, however requests interleave.
- Concurrency is a set of leases with expiry times, so a crashed process's leases lapse.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, NamedTuple

MINUTE_MS = 60_000
DAY_MS = 86_400_000
NANO = 1_000_000_000
EPSILON_MS = 0.001  # float noise in tat arithmetic, far below any Retry-After

CheckKind = Literal["rate", "conc", "day", "month"]


class Check(NamedTuple):
    """One counter to test and bump: all of a request's checks pass, or none is applied."""

    kind: CheckKind
    key: str  # the counter (for budgets, the period suffix is appended where time is known)
    limit: int  # units per period (rate), leases (conc), nano-USD (budgets)
    amount: int  # units this request costs (rate), nano-USD reserved (budgets); 0 for conc
    extra: int  # period in ms (rate), lease lifetime in ms (conc); 0 for budgets


class Verdict(NamedTuple):
    admitted: bool
    failed: int  # index of the first check that failed, -1 when admitted
    retry_ms: float  # when the failed check could pass
    periods: tuple[str, ...]  # admitted budget checks' full keys (key:period), in check order


class Settlement(NamedTuple):
    """What to undo or adjust once a request is over."""

    kind: Literal["rate", "conc", "budget"]
    key: str  # for budgets, the full key the reservation was made in
    a: int  # rate: limit; conc: unused; budget: nano-USD reserved
    b: int  # rate: period ms; budget: nano-USD actually spent
    c: int  # rate: units used minus units reserved
    lease: str = ""


def gcra(tat: float, now: float, limit: int, period_ms: int, cost: int) -> tuple[float, float]:
    """-> (new tat, retry ms). A positive retry means denied, and tat is returned unchanged."""
    if limit <= 0:
        return tat, float(period_ms)
    new = max(tat, now) + cost * period_ms / limit
    over = new - now - period_ms
    return (tat, over) if over > EPSILON_MS else (new, 0.0)


def regcra(tat: float, now: float, limit: int, period_ms: int, delta: int) -> float:
    """Move a bucket by `delta` units after the fact (negative: give back what was not used)."""
    if limit <= 0:
        return tat
    return max(tat, now) + delta * period_ms / limit if delta > 0 else max(now, tat + delta * period_ms / limit)


def fits(spent: int, reserved: int, budget: int, amount: int) -> bool:
    """May a request with this worst-case cost start? Callers reserve at least 1 (`pipeline/limit.py`),
    so a spent budget admits nothing; `admit.lua` asks the same of a positive amount."""
    return spent + reserved + amount <= budget


def settle(spent: int, reserved: int, held: int, actual: int) -> tuple[int, int]:
    """-> (spent, reserved) once a request that held `held` has really cost `actual`."""
    return spent + actual, max(0, reserved - held)


def period(kind: CheckKind, now_ms: float) -> tuple[str, float]:
    """-> (key suffix, end of the period in ms) for a UTC day or month."""
    if kind == "day":
        day = int(now_ms // DAY_MS)
        return f"d{day}", (day + 1) * DAY_MS
    moment = datetime.fromtimestamp(now_ms / 1000, UTC)
    y, m = moment.year, moment.month
    end = datetime(y + m // 12, m % 12 + 1, 1, tzinfo=UTC)
    return f"m{y:04d}{m:02d}", end.timestamp() * 1000


def nano_usd(usd: float) -> int:
    return int(-(-usd * NANO // 1))  # rounded up: a reservation never falls short by float noise
