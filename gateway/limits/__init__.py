"""Rate limits, concurrency caps and spend budgets, counted in this process or in Redis.

`rules` holds the arithmetic (shared by the memory backend and mirrored by the Lua scripts),
`store` the two backends, and `gateway/pipeline/limit.py` turns a request into checks.
"""
