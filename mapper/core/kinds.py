"""The one table of map kinds: each name, the estimator class that fits it, and the groups
that callers (map files, the catalog, the trainer) take from it."""

from __future__ import annotations

from mapper.core.ensemble import EnsembleMap
from mapper.core.kernel import KernelMap
from mapper.core.maps import AffineMap, EmbeddingMap, LinearMap, RotationMap
from mapper.core.mlp import MLPMap

#: Maps fitted directly from A's to B's embeddings, in the order a server prefers them
#: when asked for "any" kind.
DIRECT: dict[str, type[EmbeddingMap]] = {
    "linear": LinearMap,
    "rotation": RotationMap,
    "mlp": MLPMap,
    "kernel": KernelMap,
    "ensemble": EnsembleMap,
}
#: Kinds a map is served as that name how it was chosen, not its class: ``tuned`` maps are
#: linear, kernel or ensemble maps chosen per model pair, with their scoring, by cross-validation.
LABELS: tuple[str, ...] = ("tuned",)
#: Every map class a map file may hold (affine: a composed map, e.g. two hub legs).
FILE_CLASSES: dict[str, type[EmbeddingMap]] = {**DIRECT, "affine": AffineMap}
#: What mapper-train fits and evaluates: the direct kinds and the canonical hub.
TRAINABLE: tuple[str, ...] = (*LABELS, *DIRECT, "hub")
#: What a caller may ask for: a kind, or "any" (tuned first, then direct, then a hub).
REQUESTABLE: tuple[str, ...] = ("any", *TRAINABLE)
