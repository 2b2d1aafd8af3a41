"""Two galleries as a vendor switch leaves them, from the face zoo's LFW embeddings: the
old model's templates of one half of each person's photos, and the new model's templates
of the other half (re-enrolments from new photos). No photo is in both.

    python -m tools.lfw_galleries OLD_MODEL NEW_MODEL OUT_DIR [--singles N]

writes OUT_DIR/old.parquet and OUT_DIR/new.parquet for `mapper-train --old-gallery
OUT_DIR/old.parquet --new-gallery OUT_DIR/new.parquet --models OLD_MODEL NEW_MODEL`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mapper.datasets.face_zoo import identity_of, load_lfw_embeddings
from mapper.datasets.gallery import write_gallery
from mapper.eval.pairing import old_new_rows


def write_lfw_galleries(
    out: Path,
    old_model: str,
    new_model: str,
    *,
    names: np.ndarray | None = None,
    embeddings: dict[str, np.ndarray] | None = None,
    singles: int = 0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``out``/old.parquet and ``out``/new.parquet; returns the rows (of ``names``) in
    each. ``singles``: people with one photo added to the old gallery only (impostors)."""
    if names is None or embeddings is None:
        names, embeddings = load_lfw_embeddings()
    ids = np.array([identity_of(str(n)) for n in names])
    old, new = (np.unique(r) for r in old_new_rows(ids, seed))
    old = np.r_[old, np.flatnonzero(~np.isin(ids, ids[old]))[:singles]]
    out.mkdir(parents=True, exist_ok=True)
    write_gallery(out / "old.parquet", names[old], ids[old], embeddings[old_model][old])
    write_gallery(out / "new.parquet", names[new], ids[new], embeddings[new_model][new])
    return old, new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old_model")
    ap.add_argument("new_model")
    ap.add_argument("out", type=Path)
    ap.add_argument("--singles", type=int, default=0, help="one-photo people in the old gallery only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    old, new = write_lfw_galleries(
        args.out, args.old_model, args.new_model, singles=args.singles, seed=args.seed
    )
    print(f"{args.out}/old.parquet: {old.size} templates; {args.out}/new.parquet: {new.size}")


if __name__ == "__main__":
    main()
