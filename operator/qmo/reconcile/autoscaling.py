"""What the cluster offers an autoscaling model, found out cheaply: is KEDA's ScaledObject API served?

Asked through discovery (``/apis/keda.sh/v1alpha1``, readable by every authenticated client, so no RBAC
grant), at most once per ``ttl`` seconds for the whole operator, and only while some model autoscales: a
reconcile costs no request for it. Installing or removing KEDA is noticed within ``ttl``; the models then
switch autoscaler on their next reconcile (the resync timer at the latest).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from qmo.desired.autoscaling import KEDA_API_VERSION, AutoscalingEnvironment
from qmo.reconcile.kube import ApiError, Kube

log = logging.getLogger(__name__)

DISCOVERY_TTL_SECONDS = 60.0


class AutoscalingDiscovery:
    """One per operator: the cached answer to "is KEDA installed", plus the configured Prometheus address."""

    def __init__(
        self,
        kube: Kube,
        *,
        prometheus_url: str | None = None,
        ttl: float = DISCOVERY_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.prometheus_url = prometheus_url or None
        self.ttl = ttl
        self.clock = clock
        self._keda: bool | None = None
        self._checked_at = 0.0
        self._lock = asyncio.Lock()

    async def environment(self) -> AutoscalingEnvironment:
        async with self._lock:
            if self._keda is None or self.clock() - self._checked_at >= self.ttl:
                self._keda = await self._keda_served()
                self._checked_at = self.clock()
        return AutoscalingEnvironment(keda=self._keda, prometheus_url=self.prometheus_url)

    def forget(self) -> None:
        """Discover again on the next use (a request found KEDA's API gone or not yet served)."""
        self._keda = None

    async def _keda_served(self) -> bool:
        try:
            resources = await self.kube.served_resources(KEDA_API_VERSION)
        except ApiError as error:
            # Discovery trouble is not a reason to fail a reconcile: keep the last answer (none: no KEDA).
            log.warning("discovery of %s failed, assuming it unchanged: %s", KEDA_API_VERSION, error)
            return bool(self._keda)
        return resources is not None and "scaledobjects" in resources
