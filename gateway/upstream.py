"""The one HTTP client pool to providers, and the edge where aiohttp's errors become ours.

A `Transport` sends one prepared `UpstreamRequest` and returns an `UpstreamResponse`; that is all
the dispatcher knows of the network. `HttpTransport` shares a single aiohttp session (one
connection pool for every provider) and carries its provider's timeouts; `MockTransport` (in
`providers/mock.py`) answers in-process. Every aiohttp or socket exception raised while connecting
or reading is translated here, once, into the `errors` tree.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    url: str
    headers: Mapping[str, str]
    body: bytes


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...
    def chunks(self) -> AsyncIterator[bytes]: ...
    def close(self) -> None: ...


class Transport(Protocol):
    address: str  # host:port of the real upstream, for traces

    async def send(self, request: UpstreamRequest, first_byte_s: float) -> UpstreamResponse: ...


@contextlib.contextmanager
def translated(provider: str, waiting_for_headers: bool = False) -> Iterator[None]:
    """Map whatever the network raises into the gateway's error tree, naming only the provider."""
    try:
        yield
    except GatewayError:
        raise
    except aiohttp.ConnectionTimeoutError:
        raise UpstreamTimeout(f"connecting to provider {provider!r} timed out", code="connect_timeout") from None
    except (TimeoutError, aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError):
        if waiting_for_headers:
            raise UpstreamTimeout(f"provider {provider!r} did not start answering in time", code="first_byte_timeout") from None
        raise UpstreamTimeout(f"provider {provider!r} went silent mid-response", code="idle_timeout") from None
    except aiohttp.ClientConnectorError:
        raise UpstreamError(f"could not connect to provider {provider!r}", code="connect_error") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError, ConnectionError):
        raise UpstreamError(f"provider {provider!r} closed the connection", code="upstream_disconnected") from None
    except aiohttp.ClientError:
        raise UpstreamError(f"request to provider {provider!r} failed", code="upstream_error") from None


class Pool:
    """Owns the shared aiohttp session; opened and closed by the app's lifespan."""

    def __init__(self, max_connections: int) -> None:
        self._max = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "pool used before startup"
        return self._session

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._max, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",), trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class HttpResponse:
    __slots__ = ("_provider", "_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, provider: str) -> None:
        self._response = response
        self._provider = provider
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        with translated(self._provider):
            try:
                return await self._response.read()
            finally:
                self._response.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        with translated(self._provider):
            async for chunk in self._response.content.iter_any():
                yield chunk

    def close(self) -> None:
        """Drop the connection: the provider sees it close and stops generating."""
        self._response.close()


class HttpTransport:
    """Connect timeout from aiohttp; first byte (response headers) bounded here; idle gaps by sock_read."""

    def __init__(self, pool: Pool, provider: str, address: str, connect_s: float, idle_s: float) -> None:
        self._pool = pool
        self._provider = provider
        self.address = address
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=idle_s)

    async def send(self, request: UpstreamRequest, first_byte_s: float) -> UpstreamResponse:
        with translated(self._provider, waiting_for_headers=True):
            async with asyncio.timeout(first_byte_s):
                response = await self._pool.session.post(request.url, data=request.body, headers=request.headers, timeout=self._timeout)
        return HttpResponse(response, self._provider)
