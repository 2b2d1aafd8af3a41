"""The library's errors, one family: a caller (the service, a CLI) maps each to its own
answer by class, and anything else is a bug.

``InvalidInput`` and its subclasses are the caller's fault (INVALID_ARGUMENT); ``NotFound``
names something that does not exist (NOT_FOUND); ``LimitExceeded`` a request over a
configured bound (RESOURCE_EXHAUSTED); ``Unavailable`` a dependency that is down.
"""

from __future__ import annotations


class MapperError(Exception):
    """Base of every error the library raises on purpose."""


class InvalidInput(MapperError, ValueError):
    """Input that cannot be used as given."""


class EmbeddingError(InvalidInput):
    """Embeddings that cannot be used as given (shape, dtype, NaN/Inf, dimension)."""


class FitError(InvalidInput):
    """Data that cannot determine the requested map (too few pairs, rank deficiency)."""


class MapFileError(InvalidInput):
    """A map file that is corrupt, truncated, tampered with or of an unknown format."""


class NotFound(MapperError, LookupError):
    """Something named that does not exist."""


class MapNotFound(NotFound):
    """No stored map can translate between the requested models."""


class UnknownModelError(NotFound, KeyError):
    """A face model name that is neither built in nor declared in the models file."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class LimitExceeded(MapperError):
    """A request over a configured bound (rows, bytes)."""


class Cancelled(MapperError):
    """Work stopped because its caller cancelled or its deadline passed."""


class Unavailable(MapperError):
    """A dependency (Triton, the store) cannot be reached now; retrying may help."""


class TritonUnavailableError(Unavailable, RuntimeError):
    """Triton cannot be reached or timed out."""


class TritonModelError(MapperError, RuntimeError):
    """Triton refused this model's call for a reason other than its input (the model is not
    loaded, or failed); retrying will not help until the model server is fixed."""


class WeightsError(MapperError, RuntimeError):
    """A face model's weight files are missing or corrupt."""
