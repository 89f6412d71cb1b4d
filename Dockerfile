# llm-gateway: slim image, non-root, `gateway serve` as the entrypoint.
#   docker build -t llm-gateway .
#   docker run -p 8080:8080 -v $PWD/config.toml:/etc/gateway/config.toml:ro \
#     -v $PWD/policies:/etc/gateway/policies:ro -e OPENAI_API_KEY llm-gateway
# The policies mount is required: without a key the container exits 1 (see below).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    GATEWAY_CONFIG=/etc/gateway/config.toml TIKTOKEN_CACHE_DIR=/var/lib/gateway/tiktoken

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /var/lib/gateway --create-home gateway \
 && mkdir -p /etc/gateway/policies /etc/gateway/.gateway \
 && chown gateway /etc/gateway/.gateway

# The example config serves the offline mock model. Mount your own config and policies over
# /etc/gateway. The image ships NO key (the README's demo key is not copied) and never opens
# silently: started without a policy mount holding at least one key, `gateway serve` exits 1 with a
# message naming /etc/gateway/policies. Create a key with `gateway keys new`; open mode (no keys
# needed) only if your mounted config says `[policies] open = true` (logged as a WARNING at start).
COPY config.example.toml /etc/gateway/config.toml
# Its trace store and prompt state live in /etc/gateway/.gateway (relative to the config file):
# mount a volume there to keep them across containers.
VOLUME /etc/gateway/.gateway

USER gateway
WORKDIR /var/lib/gateway
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway", "serve"]
CMD ["--host", "0.0.0.0"]
