"""Score thresholds by false-accept rate: measured by mapper-train on the fitting people,
stored in a map file's provenance, read by Compare to decide same or different."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mapper.errors import InvalidInput


def far_key(far: float) -> str:
    """The key a FAR is stored under: ``1e-3`` -> ``"0.001"`` (``format(far, "g")``)."""
    return f"{far:g}"


@dataclass(frozen=True)
class Calibration:
    """{FAR key: cosine threshold}; a pair is "same" when its score >= the threshold."""

    thresholds: Mapping[str, float] = field(default_factory=dict)

    #: Where a map file keeps it: ``metadata["provenance"][PROVENANCE_KEY]``.
    PROVENANCE_KEY = "calibration"

    def threshold(self, far: float) -> float:
        """The threshold at ``far``; :class:`InvalidInput` naming the calibrated FARs if absent."""
        key = far_key(far)
        if key not in self.thresholds:
            raise InvalidInput(
                f"no calibrated threshold at FAR {key} for this map; calibrated: {sorted(self.thresholds)}"
            )
        return float(self.thresholds[key])

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.thresholds.items()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Calibration:
        """Read from a map file's metadata (empty when the file carries none)."""
        return cls(dict(metadata.get("provenance", {}).get(cls.PROVENANCE_KEY, {})))
