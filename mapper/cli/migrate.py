"""mapper-migrate: translate a stored gallery in bulk, on Ray Data, resumably.

Input: Parquet (a file or a folder of files) with an id column and an embedding column,
either ``fixed_size_list<float32>[d]`` / ``list<float32>`` or ``binary`` holding d
little-endian float32. Output: a folder of Parquet parts with the same id column and the
translated embeddings as ``fixed_size_list<float32>[d_target]``; the map's id, version
and checksum are in every part's schema metadata. Rows that cannot be translated (wrong
dimension, NaN/Inf, missing id) go to ``rejects/`` with the reason. Each input row group
is one partition, written atomically (temporary name, then rename): a rerun skips the
partitions already written, and the end checks that every input row is either in the
output exactly once or rejected.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mapper.core import mapfile
from mapper.core.maps import EmbeddingMap
from mapper.datasets.gallery import REASONS, to_matrix


@dataclass(frozen=True)
class Partition:
    index: int
    path: str
    row_group: int
    rows: int


def list_partitions(source: str | os.PathLike[str]) -> list[Partition]:
    """One partition per row group of every Parquet file under ``source``, in order."""
    source = Path(source)
    files = sorted(source.rglob("*.parquet")) if source.is_dir() else [source]
    if not files:
        raise SystemExit(f"{source}: no Parquet files")
    parts = []
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            parts.append(Partition(len(parts), str(f), g, meta.row_group(g).num_rows))
    return parts


class PartitionWriter:
    """Translates one partition; used by every Ray worker (the map travels as bytes)."""

    def __init__(
        self, map_bytes: bytes, output: str, id_column: str, embedding_column: str, metadata: dict[str, str]
    ) -> None:
        self.map_bytes = map_bytes
        self.output = Path(output)
        self.id_column = id_column
        self.embedding_column = embedding_column
        self.metadata = metadata
        self._map: EmbeddingMap | None = None

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        part = Partition(**row)
        done = self.output / f"part-{part.index:06d}.parquet"
        rejects = self.output / "rejects" / f"part-{part.index:06d}.parquet"
        if done.exists():  # finished by an earlier run: never redone
            return {
                "index": part.index,
                "rows_in": part.rows,
                "rows_out": pq.ParquetFile(done).metadata.num_rows,
                "rejected": pq.ParquetFile(rejects).metadata.num_rows if rejects.exists() else 0,
                "skipped": True,
            }
        if self._map is None:
            self._map = mapfile.loads(self.map_bytes, "map")
        m = self._map
        table = pq.ParquetFile(part.path).read_row_group(
            part.row_group, columns=[self.id_column, self.embedding_column]
        )
        ids = table.column(self.id_column)
        x, reason = to_matrix(table.column(self.embedding_column), m.n_features_in_)
        reason[(reason == 0) & ~np.isfinite(x).all(axis=1)] = 2
        reason[np.asarray(ids.is_null().to_numpy(zero_copy_only=False), bool)] = 4
        ok = reason == 0
        y = m.transform(x[ok]) if ok.any() else np.zeros((0, m.n_features_out_), np.float32)
        out = pa.table(
            {
                self.id_column: ids.filter(pa.array(ok)),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(y.astype(np.float32).ravel()), m.n_features_out_
                ),
            }
        ).replace_schema_metadata(self.metadata)
        rejected = int((~ok).sum())
        if rejected:
            bad = np.flatnonzero(~ok)
            rej = pa.table(
                {
                    "row": pa.array(bad, pa.int64()),
                    self.id_column: ids.take(pa.array(bad)),
                    "reason": pa.array([REASONS[int(r)] for r in reason[bad]]),
                    "source": pa.array([f"{part.path}#rowgroup={part.row_group}"] * rejected),
                }
            )
            _atomic_write(rej, rejects)
        _atomic_write(out, done)  # last: its existence marks the partition finished
        return {
            "index": part.index,
            "rows_in": part.rows,
            "rows_out": int(ok.sum()),
            "rejected": rejected,
            "skipped": False,
        }


def _atomic_write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_map(args: argparse.Namespace) -> tuple[bytes, dict[str, str]]:
    if args.map:
        data = Path(args.map).read_bytes()
        obj = mapfile.loads(data, args.map)
        from mapper.serving.catalog import map_id_of

        ident, version = map_id_of(obj), "file"
    else:
        from mapper.serving.stores import open_store

        stored = open_store(args.store).get(args.map_id, args.version)
        data, ident, version = stored.data or b"", stored.ref.map_id, str(stored.ref.version)
        obj = mapfile.loads(data, ident)
    if not isinstance(obj, EmbeddingMap):
        raise SystemExit("mapper-migrate needs a single map (for a hub, export hub.mapping(a, b) to a file)")
    meta = {
        "mapper.map_id": ident,
        "mapper.map_version": version,
        "mapper.map_sha256": hashlib.sha256(data).hexdigest(),
    }
    return data, meta


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    t0 = time.perf_counter()
    map_bytes, metadata = load_map(args)
    parts = list_partitions(args.input)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob(".part-*.tmp"), *out.glob("rejects/.part-*.tmp")]:
        stale.unlink()  # left by a killed run; that partition is redone
    ray.init(
        address=args.address,
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
    )
    try:
        writer = PartitionWriter(map_bytes, str(out), args.id_column, args.embedding_column, metadata)
        ds = ray.data.from_items([p.__dict__ for p in parts], override_num_blocks=len(parts))
        results = ds.map(writer, concurrency=args.concurrency).take_all()
    finally:
        ray.shutdown()
    results.sort(key=lambda r: r["index"])
    summary = {
        "partitions": len(parts),
        "partitions_skipped": sum(r["skipped"] for r in results),
        "rows_in": sum(p.rows for p in parts),
        "rows_out": sum(r["rows_out"] for r in results),
        "rejected": sum(r["rejected"] for r in results),
        "map": metadata,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    check(out, parts, summary)
    (out / "_SUMMARY.json").write_text(json.dumps(summary, indent=1))
    return summary


def check(out: Path, parts: list[Partition], summary: dict[str, Any]) -> None:
    """Every partition written once; output + rejects = input, row for row."""
    written = sorted(out.glob("part-*.parquet"))
    if len(written) != len(parts):
        raise SystemExit(f"{len(written)} output parts for {len(parts)} partitions")
    rows_out = sum(pq.ParquetFile(p).metadata.num_rows for p in written)
    rejected = sum(pq.ParquetFile(p).metadata.num_rows for p in (out / "rejects").glob("part-*.parquet"))
    if rows_out + rejected != summary["rows_in"] or rows_out != summary["rows_out"]:
        raise SystemExit(
            f"row counts do not add up: in {summary['rows_in']}, out {rows_out}, rejected {rejected}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="mapper-migrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("input", help="Parquet file or folder of the gallery")
    ap.add_argument("output", help="folder for the translated parts (created; rerun to resume)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--map", help="a map file (.safetensors) written by mapper")
    src.add_argument("--map-id", help="a map in the service's store, e.g. 'sface->dlib:linear'")
    ap.add_argument(
        "--store",
        default="maps.sqlite",
        help="map store for --map-id: SQLite file or postgresql://... (default maps.sqlite)",
    )
    ap.add_argument("--version", type=int, default=None, help="map version (default: the active one)")
    ap.add_argument("--id-column", default="id")
    ap.add_argument("--embedding-column", default="embedding")
    ap.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    ap.add_argument("--concurrency", type=int, default=None, help="parallel partition writers")
    args = ap.parse_args(argv)
    summary = run(args)
    m = summary["map"]
    print(
        f"partitions {summary['partitions']} ({summary['partitions_skipped']} already done); rows in "
        f"{summary['rows_in']:,}, out {summary['rows_out']:,}, rejected {summary['rejected']:,}; "
        f"{summary['seconds']} s; map {m['mapper.map_id']} v{m['mapper.map_version']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
