"""mapper-models: list, verify and install face models into a Triton model repository."""

from __future__ import annotations

import argparse
import sys

from mapper.classifiers import registry as classifiers
from mapper.datasets.face_zoo import models_dir
from mapper.faces import registry
from mapper.triton.repository import write_classifiers, write_repository


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="mapper-models",
        description="Face models known to this project: where their weights come from, whether a local "
        "copy is intact, and Triton model repositories for them. Weights live under "
        "<weights-dir>/<model name>/ (the face zoo's layout); nothing is downloaded.",
    )
    ap.add_argument("--models-file", help="TOML file declaring more models (see mapper/faces/registry.py)")
    ap.add_argument(
        "--weights-dir", default=None, help="folder of model folders (default: <face zoo>/models)"
    )
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print each model: runtime, input, dimension, source, licence")
    sub.add_parser("verify", help="check every weight file exists and matches its sha256")
    repo = sub.add_parser("repository", help="write a Triton model repository")
    repo.add_argument("out", help="folder to write (e.g. model_repository)")
    repo.add_argument("--gpu", action="store_true", help="GPU variant: native backends, weights copied in")
    repo.add_argument("--only", nargs="*", help="model names (default: all)")
    repo.add_argument(
        "--imagenet",
        action="store_true",
        help="also the eight ImageNet classifiers (mapper-imagenet; weights from the ImageNet zoo)",
    )
    args = ap.parse_args(argv)

    models = registry.load(args.models_file)
    weights = args.weights_dir or models_dir()
    if args.command == "list":
        for m in [*models.values(), registry.DETECTOR]:
            size = f"{m.input_size}x{m.input_size} {m.channels}" if m.input_size else "any size"
            print(f"{m.name:<24} {m.runtime:<12} {size:<14} dim {m.dim:<4} {m.licence:<16} {m.source}")
            for f in m.files:
                print(f"{'':<26}{f.path}  sha256 {f.sha256[:16]}…  {f.url}")
        return 0
    if args.command == "verify":
        bad = 0
        for m in [*models.values(), registry.DETECTOR]:
            problems = m.verify(weights)
            bad += bool(problems)
            print(f"{m.name:<24} {'ok' if not problems else 'FAILED'}")
            for p in problems:
                print(f"    {p}")
        return 1 if bad else 0
    chosen = [models[n] for n in args.only] if args.only else list(models.values())
    written = write_repository(args.out, chosen, gpu=args.gpu, weights_dir=weights)
    if args.imagenet:
        written += write_classifiers(args.out, list(classifiers.CLASSIFIERS))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
