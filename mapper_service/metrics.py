"""The service's Prometheus metrics, defined once."""

from __future__ import annotations

import functools

import prometheus_client as prom

from mapper.serving.catalog import Catalog

REQUESTS = prom.Counter("mapper_requests_total", "RPCs handled", ["method", "code"])
LATENCY = prom.Histogram(
    "mapper_request_seconds",
    "RPC latency",
    ["method"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TRANSLATED = prom.Counter("mapper_embeddings_translated_total", "Embeddings translated", ["source", "target"])
MAP_VERSION = prom.Gauge("mapper_map_version", "Active version of each served map", ["map_id"])
MAPS_LOADED = prom.Gauge("mapper_maps_loaded", "Maps and hubs held in memory")
STORE_ERRORS = prom.Counter("mapper_store_errors_total", "Failed store reads or writes")
STORE_UP = prom.Gauge(
    "mapper_store_up", "1 if the last read of the map store worked, else 0 (maps served may be older)"
)
GENERATION = prom.Gauge("mapper_store_generation", "Store generation whose maps are being served")


@functools.lru_cache(maxsize=4096)
def translated(source: str, target: str) -> prom.Counter:
    """TRANSLATED's child for a model pair (called only after the pair resolved to a map):
    a labels() lookup per call costs more than the count itself."""
    return TRANSLATED.labels(source, target)


def record_catalog(catalog: Catalog, generation: int) -> None:
    """Export what a reload put in memory."""
    GENERATION.set(generation)
    MAP_VERSION.clear()
    for ref in catalog.refs():
        MAP_VERSION.labels(ref.map_id).set(ref.version)
    MAPS_LOADED.set(len(catalog))
