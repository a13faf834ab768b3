"""Energy, GPU-hours and cost per namespace over the last ``STOWAGE_COST_WINDOW_S``, for
``/metrics`` (a minute's cache): from the agents' samples, each GPU's energy and time charged
to the namespace whose pod ran on it (:func:`optimizer.store.usage.namespace_gpu_usage`),
priced with ``STOWAGE_PRICE_PER_KWH`` and ``STOWAGE_PRICE_PER_GPU_HOUR``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Final

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from optimizer import metrics as metric_names
from optimizer.api.state import AppState, Refreshed
from optimizer.store.usage import namespace_gpu_usage

JOULES_PER_KWH: Final = 3.6e6


class CostCollector(Collector):
    """Per-namespace energy (kWh), GPU-hours and their price, recomputed at most once a
    minute."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._usage = Refreshed(self._read)

    def _read(self) -> dict[str, tuple[float, float]]:
        until = self.state.clock()
        since = until - timedelta(seconds=self.state.settings.cost_window_s)
        with self.state.sessions() as session:
            return namespace_gpu_usage(session, since=since, until=until)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        usage = self._usage.get()
        if usage is None:
            return
        settings = self.state.settings
        window = f"{int(settings.cost_window_s)}s"
        energy = GaugeMetricFamily(
            metric_names.NAMESPACE_ENERGY_KWH,
            "GPU energy of the namespace's pods over the window, kWh.",
            labels=["namespace", "window"],
        )
        hours = GaugeMetricFamily(
            metric_names.NAMESPACE_GPU_HOURS,
            "GPU-hours the namespace's pods ran over the window.",
            labels=["namespace", "window"],
        )
        cost = GaugeMetricFamily(
            metric_names.NAMESPACE_COST,
            "Energy and GPU-hours of the window priced with STOWAGE_PRICE_PER_KWH and "
            "STOWAGE_PRICE_PER_GPU_HOUR.",
            labels=["namespace", "window"],
        )
        for namespace, (joules, seconds) in sorted(usage.items()):
            kwh, gpu_hours = joules / JOULES_PER_KWH, seconds / 3600
            energy.add_metric([namespace, window], kwh)
            hours.add_metric([namespace, window], gpu_hours)
            price = kwh * settings.price_per_kwh + gpu_hours * settings.price_per_gpu_hour
            cost.add_metric([namespace, window], price)
        yield energy
        yield hours
        yield cost
