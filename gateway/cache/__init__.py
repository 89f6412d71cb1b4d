"""The response cache: canonical keys, stores (memory, Redis), stored answers and single-flight calls."""
