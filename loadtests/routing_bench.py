"""Cost of a routing decision: balancer choice, attempt record, outcome, per request (in-process).

.venv/bin/python loadtests/routing_bench.py
"""

import time

from gateway.pipeline.record import Attempt
from gateway.routing import Balancer

N = 200_000

for balancer, name in ((Balancer([1.0]), "1 target"), (Balancer([3.0, 1.0]), "2 targets weighted")):
    started = time.perf_counter()
    for _ in range(N):
        index = balancer.choose(None, frozenset())
        assert index is not None
        Attempt("up/gpt", "gpt", 0.001, server_address="127.0.0.1:1")
        balancer.finished(index, ok=True, latency_s=0.001)
    print(f"{name}: {(time.perf_counter() - started) / N * 1e6:.2f} us per request")
