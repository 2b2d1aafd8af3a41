"""mapper-migrate on a real local Ray: a million 128-d templates plus planted bad rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mapper import LinearMap
from mapper.cli.migrate import main as migrate
from mapper.core import mapfile

from .servers import ROOT

N, D = 250_000, 128


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """Two fixed-size-list files (250,000 rows, 8 row groups each) and one file of bad rows in the
    other layouts (variable lists and binary)."""
    tmp = tmp_path_factory.mktemp("gallery")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D), dtype=np.float32)
    x[[10, 125_000]] = np.nan
    x[194_444, 5] = np.inf
    ids = pa.array([f"t{k:07d}" for k in range(N)])
    (tmp / "in").mkdir()
    for f, sl in enumerate((slice(0, N // 2), slice(N // 2, N))):
        table = pa.table(
            {"id": ids[sl], "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[sl].ravel()), D)}
        )
        pq.write_table(table, tmp / "in" / f"gallery-{f}.parquet", row_group_size=N // 16)
    good = rng.standard_normal((4, D), dtype=np.float32)
    lists = pa.table(
        {
            "id": ["v0", "v1", None, "v3"],
            "embedding": pa.array(
                [good[0].tolist(), good[1][:100].tolist(), good[2].tolist(), None], pa.list_(pa.float32())
            ),
        }
    )
    pq.write_table(lists, tmp / "in" / "gallery-lists.parquet")
    binary = pa.table(
        {"id": ["b0", "b1"], "embedding": pa.array([good[3].tobytes(), b"\0" * 12], pa.binary())}
    )
    pq.write_table(binary, tmp / "in" / "gallery-binary.parquet")
    m = LinearMap(alpha=1.0, source_id="old", target_id="new").fit(
        rng.standard_normal((2000, D)), rng.standard_normal((2000, D))
    )
    mapfile.save(m, tmp / "map.safetensors")
    return tmp, x, good, m


def read_output(out):
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    ids = table.column("id").to_pylist()
    emb = np.asarray(table.column("embedding").combine_chunks().flatten(), np.float32).reshape(len(ids), -1)
    return ids, emb


@pytest.mark.slow  # long; CI runs it with make test-slow
def test_migration_equals_in_process_translation(gallery):
    tmp, x, good, m = gallery
    out = tmp / "out"
    assert migrate([str(tmp / "in"), str(out), "--map", str(tmp / "map.safetensors"), "--num-cpus", "2"]) == 0
    ids, emb = read_output(out)
    assert len(ids) == len(set(ids)) == N - 3 + 2  # 3 bad rows in the big files; v0, b0 good
    index = {k: n for n, k in enumerate(ids)}
    bad = {10, 125_000, 194_444}
    keep = np.array([k for k in range(N) if k not in bad])
    rows = np.array([index[f"t{k:07d}"] for k in keep])
    # float32 BLAS rounding depends on block boundaries and alignment: equal to ~1 ulp
    np.testing.assert_allclose(emb[rows], m.transform(x[keep]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(emb[index["v0"]], m.transform(good[:1])[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(emb[index["b0"]], m.transform(good[3:4])[0], rtol=0, atol=1e-6)
    rejects = pq.read_table(sorted((out / "rejects").glob("part-*.parquet"))).to_pylist()
    reasons = sorted(((r["id"], r["reason"]) for r in rejects), key=str)
    assert reasons == sorted(
        [
            ("t0000010", "NaN or Inf in embedding"),
            ("t0125000", "NaN or Inf in embedding"),
            ("t0194444", "NaN or Inf in embedding"),
            ("v1", "wrong dimension or unreadable embedding"),
            (None, "missing id"),
            ("v3", "missing embedding"),
            ("b1", "wrong dimension or unreadable embedding"),
        ],
        key=str,
    )
    meta = pq.read_schema(next(out.glob("part-*.parquet"))).metadata
    assert meta[b"mapper.map_id"] == b"old->new:linear" and len(meta[b"mapper.map_sha256"]) == 64


@pytest.mark.slow
def test_killed_migration_resumes_without_redoing_or_duplicating(gallery, tmp_path):
    src = gallery[0]
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "mapper.cli.migrate",
        str(src / "in"),
        str(out),
        "--map",
        str(src / "map.safetensors"),
        "--num-cpus",
        "2",
        "--concurrency",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 180
    while len(list(out.glob("part-*.parquet"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Ray workers live in their own sessions: stop what is left of the killed job's Ray.
    subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True, timeout=60
    )
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 4 <= len(before) < 18, "kill it midway"
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    assert f"({len(before)} already done)" in rerun.stdout
    for name, mtime in before.items():
        assert (out / name).stat().st_mtime_ns == mtime  # finished parts were not rewritten
    ids, _ = read_output(out)
    assert len(ids) == len(set(ids)) == N - 3 + 2
