"""The end-to-end demo (``make demo``): real face CNNs on Triton, mapper-train, the service.

1. starts Triton with the face zoo's four CNNs and the YuNet detector (CPU here);
2. starts the translation service (mapper-serve) on an empty store, with Embed via Triton;
3. runs mapper-train on a documented LFW subset (1,500 images, whole identities, seed 0):
   embeds through Triton (cached in .cache/), fits linear, rotation, hub and tuned maps on half
   the people, evaluates all pairs of the other half, publishes the maps to the service;
4. embeds a few real LFW photos through the service, translates SFace templates into
   dlib's space and compares them with dlib's own templates, over gRPC;
5. prints where the report is, and stops what it started.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from pathlib import Path

import numpy as np

from mapper.cli import train
from mapper.core.validation import l2_normalize
from mapper.datasets.face_zoo import identity_of, lfw_images_dir
from mapper.faces.registry import DEFAULT_MODELS, DETECTOR
from mapper.triton.server import TritonServer
from mapper_service.launcher import start_service

SRC, DST = "sface-2021dec-int8bq", "dlib-resnet-v1"


def pick_people(images_dir: Path) -> tuple[list[bytes], list[str]]:
    """Three real LFW photos: two of one person, one of someone else."""
    by_id: dict[str, list[str]] = {}
    for n in sorted(p.name for p in images_dir.glob("*.jpg")):
        by_id.setdefault(identity_of(n), []).append(n)
    person = next(i for i in sorted(by_id) if len(by_id[i]) >= 2 and i.startswith("G"))
    other = next(i for i in sorted(by_id) if i != person and i.startswith("S"))
    chosen = [by_id[person][0], by_id[person][1], by_id[other][0]]
    return [(images_dir / n).read_bytes() for n in chosen], [identity_of(n) for n in chosen]


def try_the_service(address: str) -> None:
    from mapper_service.client import MapperClient
    from mapper_service.gen import mapper_pb2 as pb

    images, people = pick_people(lfw_images_dir())
    with MapperClient(address) as client:

        def embed(model: str) -> np.ndarray:
            reply = client.stub.Embed(pb.EmbedRequest(model=model, images=images), timeout=120)
            e = reply.embeddings
            return np.frombuffer(e.data, "<f4").reshape(e.rows, e.dim)

        sface, dlib = embed(SRC), embed(DST)
        translated, ref = client.translate(sface, SRC, DST)
        unit = l2_normalize(dlib)
        print(
            f"\nTranslate: {len(images)} SFace templates into dlib's space with {ref.map_id} v{ref.version};"
        )
        print(
            f"  cosine with dlib's own template of {people[1]} (same person): {translated[0] @ unit[1]:.3f}, "
            f"of {people[2]}: {translated[0] @ unit[2]:.3f}"
        )
        cmp = client.compare(sface[[0, 0]], SRC, dlib[[1, 2]], DST, far=1e-3)
        print(
            f"Compare: SFace template of {people[0]} against dlib templates with {cmp.map.map_id}, scored "
            f"{cmp.scoring}, decision at FAR 1e-3 (threshold {cmp.threshold:.3f}, calibrated on the "
            "fitting people, out of fold):"
        )
        for other, score, same in zip((people[1], people[2]), cmp.scores, cmp.same, strict=True):
            print(f"  vs {other:<28} score {score:.3f} -> {'same person' if same else 'different people'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m mapper.cli.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--images", type=int, default=1500, help="LFW images for mapper-train (default 1500)")
    ap.add_argument("--full", action="store_true", help="all 7,701 LFW images (about an hour on 2 cores)")
    ap.add_argument("--out", default="out/demo")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "maps.sqlite").unlink(missing_ok=True)
    # The admin token reaches the service and mapper-train through the environment, never a
    # command line (visible in ps) or the report.
    os.environ["MAPPER_ADMIN_TOKEN"] = secrets.token_hex(16)
    t0 = time.perf_counter()
    print("starting Triton with the face zoo's models ...", flush=True)
    with TritonServer(models=[*DEFAULT_MODELS, DETECTOR.name]) as triton:
        service = start_service(
            out / "maps.sqlite",
            "--metrics-port",
            "-1",
            "--triton-url",
            triton.url,
            "--log-level",
            "WARNING",
            workdir=out,
        )
        address = service.address
        try:
            print(f"Triton at {triton.url}, translation service at {address}", flush=True)
            train_args = [
                "--triton-url",
                triton.url,
                "--publish",
                address,
                "--out",
                str(out / "report"),
            ]
            train_args += ["--full"] if args.full else ["--images", str(args.images)]
            train.main(train_args)
            try_the_service(address)
        finally:
            service.stop(timeout=30)
    print(f"\nreport: {out / 'report' / 'report.md'}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
