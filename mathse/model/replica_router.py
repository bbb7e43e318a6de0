"""Client side of served models: an httpx transport that spreads requests over the replicas.

Each request goes to the least-loaded live replica; a connection failure marks that replica down
for a while and sends the request to another (a restarted Ray replica is looked up again).
"""

from __future__ import annotations

import time
from typing import Any, Protocol


class Replicas(Protocol):
    """The running replicas of one model (`servers.Servers`): their URLs and how to find one again."""

    base_urls: list[str]

    def resolve(self, index: int) -> str: ...


def _router_base(httpx_mod: Any) -> type:
    return httpx_mod.AsyncBaseTransport  # type: ignore[no-any-return]


def _httpx() -> Any:
    from mathse.api.client import _httpx_module

    return _httpx_module()


class ReplicaRouter(_router_base(_httpx())):  # type: ignore[misc]
    """An httpx transport: least-loaded live replica per request; connection failures fail over."""

    def __init__(self, servers: Replicas, name: str, concurrency: int, recheck_s: float = 5.0) -> None:
        httpx = _httpx()
        self.servers = servers
        self.name = name
        self.recheck_s = recheck_s
        self.concurrency = concurrency
        n = len(servers.base_urls)
        self._inner: Any = None  # built on first use: ChatClient closes its HTTP client after each batch
        self._failover = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
        self._load = [0] * n
        self._down_until = [0.0] * n
        self.failovers = 0  # requests sent again to another replica (for stats and tests)

    def _pick(self, tried: set[int]) -> int | None:
        now = time.monotonic()
        live = [i for i in range(len(self._load)) if i not in tried and self._down_until[i] <= now]
        return min(live, key=lambda i: self._load[i]) if live else None

    async def handle_async_request(self, request: Any) -> Any:
        import asyncio

        tried: set[int] = set()
        while True:
            index = self._pick(tried)
            if index is None:
                raise self._failover[0](f"no replica of {self.name} answers", request=request)
            url = self.servers.base_urls[index]
            if self._down_until[index]:  # back from a failure: ask where it lives now (Ray restarts)
                try:
                    url = await asyncio.to_thread(self.servers.resolve, index)
                except Exception:
                    self._down_until[index] = time.monotonic() + self.recheck_s
                    tried.add(index)
                    continue
                self._down_until[index] = 0.0
            target = _httpx().URL(url)
            request.url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port)
            request.headers["host"] = f"{target.host}:{target.port}"
            if self._inner is None:
                httpx = _httpx()
                limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
                self._inner = httpx.AsyncHTTPTransport(limits=limits)
            self._load[index] += 1
            try:
                return await self._inner.handle_async_request(request)
            except self._failover:
                self._down_until[index] = time.monotonic() + self.recheck_s
                tried.add(index)
                self.failovers += 1
            finally:
                self._load[index] -= 1

    async def aclose(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            await inner.aclose()
