"""Images per second per face model: through Triton (dynamic batching) against the same
runtime in-process, and end to end (detection + alignment + all four models) via Triton.

Inputs are real LFW faces, detected and aligned once up front, so the per-model figures
measure the network and its serving path only.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mapper.datasets.face_zoo import face_zoo_dir  # noqa: E402
from mapper.faces import registry, runtimes  # noqa: E402
from mapper.faces.embed import FaceEmbedder, LocalBackend  # noqa: E402
from mapper.faces.preprocess import to_input  # noqa: E402
from mapper.triton.client import TritonClient  # noqa: E402
from mapper.triton.embedding import TritonBackend  # noqa: E402
from mapper.triton.server import TritonServer  # noqa: E402


def rate(fn, n: int, repeats: int = 2) -> float:
    """Best images/s over ``repeats`` runs of fn() (which processes n images)."""
    return n / min(timeit.repeat(fn, number=1, repeat=repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="LFW images per model (dlib gets a quarter)")
    ap.add_argument("--concurrency", type=int, default=4, help="Triton client calls in flight")
    ap.add_argument("--batch", type=int, default=32, help="images per Triton call and per in-process call")
    args = ap.parse_args()
    zoo = face_zoo_dir()
    paths = sorted((zoo / "lfw" / "images").iterdir())[: args.images]
    images = [p.read_bytes() for p in paths]
    weights = zoo / "models"
    local = FaceEmbedder(LocalBackend(weights))
    detections = local.backend.detect(images)

    print(f"{len(images)} LFW images, batches of {args.batch}, {args.concurrency} Triton calls in flight")
    print(f"{'model':<24} {'in-process img/s':>17} {'Triton img/s':>13} {'ratio':>6}")
    with (
        TritonServer(ROOT / "model_repository", weights_dir=weights) as server,
        TritonClient(server.url, concurrency=args.concurrency, batch_size=args.batch) as client,
    ):
        for m in registry.BUILTIN:
            n = len(images) // 4 if m.runtime == "dlib" else len(images)
            x = to_input(local.chips(images[:n], m, detections[:n]), m)
            run = runtimes.load(m, weights)
            inproc = rate(lambda: [run(x[i : i + args.batch]) for i in range(0, n, args.batch)], n)
            client.infer(m.name, m.input_name, m.output_name, x[: args.batch])  # warm-up
            served = rate(lambda: client.infer(m.name, m.input_name, m.output_name, x), n)
            print(f"{m.name:<24} {inproc:>17.1f} {served:>13.1f} {served / inproc:>6.2f}")

        remote = FaceEmbedder(TritonBackend(client))
        n = len(images) // 4

        def end_to_end() -> None:
            found = remote.backend.detect(images[:n])
            for m in registry.BUILTIN:
                remote.embed(images[:n], m.name, landmarks=found)

        print(
            f"\nend to end via Triton (YuNet + alignment + 4 models), {n} images: "
            f"{rate(end_to_end, n, repeats=1):.1f} images/s"
        )


if __name__ == "__main__":
    main()
