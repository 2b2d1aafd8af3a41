"""A replica's memory: RSS per loaded map against the map's own arrays, and the RSS of a
replica holding tuned maps for all 90 ordered pairs of the ten face models.

Real mapper-serve processes on loopback, each started on a SQLite store and measured
(VmRSS) once serving. Maps are fitted on random data at the models' real dimensions: a
map's size depends on its dimensions and kind, not on the data. The "tuned" map of each
pair is taken as the largest kind tuning can choose (an ensemble of ridge, rotation and a
2,048-landmark kernel, with S-norm statistics), so the ten-model figure is a worst case.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from itertools import permutations
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mapper import EnsembleMap, LinearMap  # noqa: E402
from mapper.core import mapfile  # noqa: E402
from mapper.eval.selection import attach_scoring  # noqa: E402
from mapper.faces.registry import BUILTIN  # noqa: E402
from mapper.serving.sqlite import SQLiteMapStore  # noqa: E402
from mapper_service.launcher import start_service  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def arrays_mib(obj: object) -> float:
    """MiB of every numpy array a loaded map holds (members, landmarks, scoring statistics)."""
    seen: set[int] = set()

    def walk(v: object) -> int:
        if isinstance(v, np.ndarray):
            return 0 if id(v) in seen or seen.add(id(v)) else v.nbytes  # type: ignore[func-returns-value]
        if isinstance(v, dict):
            return sum(walk(x) for x in v.values())
        if isinstance(v, list | tuple):
            return sum(walk(x) for x in v)
        if hasattr(v, "__dict__") and type(v).__module__.startswith("mapper"):
            return walk(vars(v))
        return 0

    return walk(obj) / 2**20


def served_rss(tmp: Path, files: list[bytes], name: str) -> float:
    path = tmp / f"{name}.sqlite"
    store = SQLiteMapStore(path)
    for data in files:
        store.publish(data)
    srv = start_service(path, "--metrics-port", "-1", "--log-level", "WARNING", workdir=tmp, timeout=600)
    try:
        return rss_mib(srv.proc.pid)
    finally:
        srv.stop()


def tuned_like(d_in: int, d_out: int, rng: np.random.Generator) -> EnsembleMap:
    X, Y = rng.standard_normal((2500, d_in)), rng.standard_normal((2500, d_out))
    return attach_scoring(EnsembleMap().fit(X, Y), "snorm", X, Y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maps", type=int, default=20, help="maps per store in the per-map measurement")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    empty = served_rss(tmp, [], "empty")
    print(f"empty store: RSS {empty:.0f} MiB")
    print(f"{'maps':<28} {'RSS MiB':>8} {'per map':>8} {'arrays':>8} {'per map - arrays':>17}")
    for label, make in (
        ("linear 512->512", lambda: LinearMap(alpha=1.0).fit(*rng.standard_normal((2, 2000, 512)))),
        ("tuned-like 512->512", lambda: tuned_like(512, 512, rng)),
    ):
        m = make()
        files = []
        for i in range(args.maps):
            m.source_id, m.target_id = f"s{i}", "t"
            files.append(mapfile.dumps(m))
        rss = served_rss(tmp, files, label.split()[0])
        per_map = (rss - empty) / args.maps
        arrays = arrays_mib(mapfile.loads(files[0]))
        print(
            f"{args.maps} x {label:<23} {rss:>8.0f} {per_map:>8.1f} {arrays:>8.1f} {per_map - arrays:>17.2f}"
        )

    dims = {spec.name: spec.dim for spec in BUILTIN}
    fitted = {pair: tuned_like(*pair, rng) for pair in {(a, b) for a in dims.values() for b in dims.values()}}
    files, total = [], 0
    for s, t in permutations(dims, 2):
        m = fitted[dims[s], dims[t]]
        m.source_id, m.target_id = s, t
        files.append(mapfile.dumps(m))
        total += len(files[-1])
    rss = served_rss(tmp, files, "ten")
    print(
        f"ten models ({sorted(dims.values())}): {len(files)} tuned-like maps, {total / 2**20:.0f} MiB of "
        f"files; replica RSS {rss:.0f} MiB"
    )


if __name__ == "__main__":
    main()
