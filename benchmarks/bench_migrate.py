"""Bulk migration: rows/s of mapper-migrate on a local Ray against one plain numpy process
reading and writing the same Parquet (the single-machine floor).

Writes a synthetic gallery (default 10 million 512-d float32 templates, 40 row groups per
file, about 20 GB) under --workdir, then translates it both ways with one linear map.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mapper import LinearMap
from mapper.cli.migrate import main as migrate
from mapper.core import mapfile


def write_gallery(folder: Path, rows: int, dim: int, per_file: int, row_group: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for f, start in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - start)
        with pq.ParquetWriter(
            folder / f"gallery-{f:04d}.parquet",
            pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32(), dim))]),
        ) as writer:
            for s in range(0, n, row_group):
                k = min(row_group, n - s)
                x = rng.standard_normal((k, dim), dtype=np.float32)
                writer.write_table(
                    pa.table(
                        {
                            "id": pa.array(np.arange(start + s, start + s + k)),
                            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim),
                        }
                    )
                )


def plain_numpy(src: Path, out: Path, m: LinearMap) -> int:
    """The floor: read each row group, translate, write it; one process, no checks."""
    out.mkdir()
    n = 0
    for k, f in enumerate(sorted(src.glob("*.parquet"))):
        pf = pq.ParquetFile(f)
        for g in range(pf.metadata.num_row_groups):
            t = pf.read_row_group(g)
            dim = t.schema.field("embedding").type.list_size
            x = np.asarray(t.column("embedding").combine_chunks().flatten()).reshape(-1, dim)
            y = m.transform(x)
            pq.write_table(
                pa.table(
                    {
                        "id": t.column("id"),
                        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(y.ravel()), y.shape[1]),
                    }
                ),
                out / f"part-{k:04d}-{g:04d}.parquet",
            )
            n += len(t)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-migrate-"))
    try:
        t0 = time.perf_counter()
        per_file = max(args.rows // 8, 1)
        write_gallery(work / "in", args.rows, args.dim, per_file, max(per_file // 5, 1))
        size = sum(p.stat().st_size for p in (work / "in").glob("*.parquet")) / 2**30
        took = time.perf_counter() - t0
        print(f"gallery: {args.rows:,} x {args.dim} float32, {size:.1f} GiB, written in {took:.0f} s")
        rng = np.random.default_rng(1)
        m = LinearMap(alpha=1.0, source_id="old", target_id="new").fit(
            rng.standard_normal((4000, args.dim)), rng.standard_normal((4000, args.dim))
        )
        mapfile.save(m, work / "map.safetensors")

        t0 = time.perf_counter()
        n = plain_numpy(work / "in", work / "plain", m)
        t_plain = time.perf_counter() - t0
        shutil.rmtree(work / "plain")
        t0 = time.perf_counter()
        migrate([str(work / "in"), str(work / "ray"), "--map", str(work / "map.safetensors")])
        t_ray = time.perf_counter() - t0
        print(f"plain numpy, one process: {n / t_plain:>12,.0f} rows/s ({t_plain:.0f} s)")
        print(
            f"mapper-migrate, local Ray: {n / t_ray:>12,.0f} rows/s ({t_ray:.0f} s, with Ray start, checks)"
        )
        print(f"ratio Ray / plain: {t_plain / t_ray:.2f}x")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
