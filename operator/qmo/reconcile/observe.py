"""Read what vLLM really allocated: the serving pods' ``/metrics``, scraped with bounds.

Scrapes are few (on a rollout change, then once per period; see ``desired.verification``), bounded in
concurrency across the whole operator, time-limited, and retried with back-off, so a hung vLLM or a
NetworkPolicy that drops the operator's packets costs seconds, never a stuck reconcile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from qmo.desired.serving import VLLM_PORT
from qmo.desired.verification import CacheObservation, MetricsFormatError, parse_cache_config

# vLLM's /metrics is ~45 kB; anything far larger is not vLLM and is not read whole.
MAX_METRICS_BYTES = 4 * 2**20


@dataclass
class Scrape:
    """Per pod: the KV cache it reports, or why it could not be read."""

    caches: dict[str, CacheObservation] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _transient(error: BaseException) -> bool:
    """Worth another try: a timeout, a refused or reset connection, a 5xx. A 4xx is not vLLM's /metrics."""
    if isinstance(error, aiohttp.ClientResponseError):
        return error.status >= 500
    return isinstance(error, TimeoutError | aiohttp.ClientError)


def metrics_url(pod: Mapping[str, Any], port: int = VLLM_PORT) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/metrics"


class PodMetricsScraper:
    """Scrapes vLLM pods. One per operator: ``concurrency`` bounds the scrapes in flight for all models."""

    def __init__(
        self, *, concurrency: int = 8, timeout: float = 3.0, attempts: int = 2, port: int = VLLM_PORT
    ) -> None:
        self._port = port
        self._slots = asyncio.Semaphore(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._attempts = attempts

    async def scrape(self, pods: Sequence[Mapping[str, Any]]) -> Scrape:
        result = Scrape()

        async def one(pod: Mapping[str, Any]) -> None:
            name = pod["metadata"]["name"]
            url = metrics_url(pod, self._port)
            if url is None:
                result.errors[name] = "the pod has no IP yet"
                return
            try:
                result.caches[name] = parse_cache_config(await self._get(url))
            except MetricsFormatError as error:
                result.errors[name] = f"{url}: {error}"
            except (TimeoutError, aiohttp.ClientError) as error:
                # No detail beyond the type: connection errors repeat the URL and the resolver's noise.
                result.errors[name] = f"{url}: {type(error).__name__} {error}".strip()[:300]

        await asyncio.gather(*(one(pod) for pod in pods))
        return result

    async def _get(self, url: str) -> str:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.5, max=4),
            retry=retry_if_exception(_transient),
            reraise=True,
        ):
            with attempt:
                async with (
                    self._slots,
                    aiohttp.ClientSession(timeout=self._timeout) as session,
                    session.get(url) as response,
                ):
                    response.raise_for_status()
                    body = await read_capped(response.content, MAX_METRICS_BYTES)
                    return body.decode("utf-8", errors="replace")
        raise AssertionError("unreachable: tenacity re-raises the last error")


async def read_capped(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or its first ``limit`` bytes. ``StreamReader.read(n)`` returns what has arrived so far,
    not n bytes: one call cut vLLM's /metrics (~45 kB, its cache line near the end) when the body came in
    pieces, and the figures read as missing."""
    body = bytearray()
    while len(body) < limit:
        chunk = await content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)
