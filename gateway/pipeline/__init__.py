"""The request's journey, one small stage per module; the order is written once, in `run.py`
(`Journey.run`), which every proxied request (chat, completions, embeddings) goes through.

Stage modules: `auth` (who is calling), `body` (reading and validating the body), `limit` (limits,
and settling them), `route` (routing rules and `Attempts`: retries, fallbacks), `reuse` (cache,
coalescing, batching), `dispatch` (calling a deployment, relaying a stream, charging what was
consumed), `answer` (every response's headers and shape), `finish` (settle, metrics, trace), with
`record` (what the request learned) and `usage` (counting tokens) beside them.
"""
