"""Galleries as Parquet: one row per template, an id column, an embedding column and
(for fitting maps from galleries) a person column.

The embedding column is ``fixed_size_list<float32>[d]``, ``list<float32>``, or ``binary``
holding d little-endian float32: the format ``mapper-migrate`` reads and writes.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq

from mapper.errors import InvalidInput


def to_matrix(column: pa.ChunkedArray | pa.Array, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows x dim float32 with bad rows zeroed, (rows,) reason codes: 0 ok, 1 wrong dim, 3 missing)."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(col)
    out = np.zeros((n, dim), np.float32)
    reason = np.zeros(n, np.int8)
    valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        lengths = np.array([len(v) if v is not None else -1 for v in col.to_pylist()])
        good = valid & (lengths == 4 * dim)
        if good.any():
            data = b"".join(v for v, g in zip(col.to_pylist(), good, strict=True) if g)
            out[good] = np.frombuffer(data, "<f4").reshape(-1, dim)
    else:
        if pa.types.is_fixed_size_list(col.type):
            lengths = np.full(n, col.type.list_size)
        else:
            lengths = np.asarray(
                pa.compute.list_value_length(col).fill_null(-1).to_numpy(zero_copy_only=False)
            )
        good = valid & (lengths == dim)
        if good.any():
            flat = col.filter(pa.array(good)).flatten().to_numpy(zero_copy_only=False)
            out[good] = np.asarray(flat, np.float32).reshape(-1, dim)
    reason[~good] = 1
    reason[~valid] = 3
    return out, reason


REASONS = {
    1: "wrong dimension or unreadable embedding",
    2: "NaN or Inf in embedding",
    3: "missing embedding",
    4: "missing id",
    5: "missing person",
}


def _dimension(col: pa.Array) -> int:
    """d of an embedding column: its fixed size, else the most common length of its rows."""
    if pa.types.is_fixed_size_list(col.type):
        return col.type.list_size
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        lengths = [len(v) // 4 for v in col.to_pylist() if v is not None]
    else:
        lengths = [n for n in pa.compute.list_value_length(col).to_pylist() if n is not None]
    if not lengths:
        raise InvalidInput("the embedding column has no values")
    return Counter(lengths).most_common(1)[0][0]


@dataclass(frozen=True)
class Gallery:
    """A gallery's usable templates: ids (n,), persons (n,), embeddings (n, d) float32,
    and how many rows were left out, by reason."""

    path: str
    ids: np.ndarray
    persons: np.ndarray
    embeddings: np.ndarray
    rejected: dict[str, int]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]


def read_gallery(
    path: str | os.PathLike[str],
    *,
    person_column: str = "person",
    id_column: str = "id",
    embedding_column: str = "embedding",
) -> Gallery:
    """Read a Parquet gallery (a file or a folder of files). Rows with a bad embedding or
    no id or person are left out and counted; a missing column or no usable row is an error."""
    path = Path(path)
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise InvalidInput(f"{path}: no Parquet gallery there")
    columns = [id_column, embedding_column, person_column]
    try:
        table = pa.concat_tables(pq.read_table(f, columns=columns) for f in files)
    except (pa.ArrowInvalid, KeyError, OSError) as e:
        raise InvalidInput(f"{path}: not a gallery with columns {columns} ({e})") from e
    col = table.column(embedding_column).combine_chunks()
    x, reason = to_matrix(col, _dimension(col))
    reason[(reason == 0) & ~np.isfinite(x).all(axis=1)] = 2
    for name, code in ((id_column, 4), (person_column, 5)):
        missing = np.asarray(table.column(name).is_null().to_numpy(zero_copy_only=False), bool)
        reason[(reason == 0) & missing] = code
    ok = reason == 0
    if not ok.any():
        raise InvalidInput(f"{path}: no usable row ({REASONS[int(np.bincount(reason).argmax())]})")
    codes, counts = np.unique(reason[~ok], return_counts=True)
    return Gallery(
        str(path),
        np.array(table.column(id_column).to_pylist(), dtype=object)[ok].astype(str),
        np.array(table.column(person_column).to_pylist(), dtype=object)[ok].astype(str),
        x[ok],
        {REASONS[int(c)]: int(n) for c, n in zip(codes, counts, strict=True)},
    )


def write_gallery(
    path: str | os.PathLike[str],
    ids: np.ndarray,
    persons: np.ndarray,
    embeddings: np.ndarray,
) -> None:
    """A gallery file as :func:`read_gallery` reads it: ``id``, ``person`` and
    ``embedding`` as ``fixed_size_list<float32>[d]``."""
    x = np.ascontiguousarray(embeddings, np.float32)
    table = pa.table(
        {
            "id": pa.array([str(i) for i in ids]),
            "person": pa.array([str(p) for p in persons]),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
        }
    )
    pq.write_table(table, path)
