"""mapper-imagenet: the 2020 paper's classification experiment on ImageNet classifiers.

For every ordered pair (A, B) of eight ImageNet-1k classifiers (five quantised TFLite
MobileNets, three EfficientNet-Lite), A's penultimate embedding is mapped into B's space
and classified by B's own final layer. Four maps are measured:

  fitted       ridge regression on embedding pairs of the same inputs (no labels), with
               augmented views of each training photo; k-fold over photos, so every
               tested photo is unseen in every view
  rotation     orthogonal Procrustes with one scale, on the same photos and folds
  towards      ridge whose penalty pulls towards that rotation instead of towards zero
  closed form  from the two final layers alone: B's logits on the mapped embedding equal
               A's logits (up to a shift); no photos, tested on all of them

Embeddings are cached (.cache/imagenet/); with them cached the run takes a few minutes.
The ImageNet zoo (photos, TFLite models) comes from $IMAGENET_ZOO_DIR or ../shared/imagenet-zoo;
docs/guides/imagenet.md says where to get each file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mapper.classifiers import registry, views
from mapper.classifiers.embed import LocalEmbed, embed_views
from mapper.core import mapfile
from mapper.datasets.imagenet_zoo import imagenet_zoo_dir, photos
from mapper.eval import imagenet
from mapper.eval.report import heatmaps, matrix_table, plt, short
from mapper.triton.embedding import classifier_embed

#: Pairs the data-size curve follows: same family, across families, small into large.
CURVE_PAIRS = (
    ("imagenet-mobilenet_v2_1.0_224_quant", "imagenet-tf2_mobilenet_v2_1.0_224_ptq"),
    ("imagenet-efficientnet-lite0", "imagenet-mobilenet_v2_1.0_224_quant"),
    ("imagenet-mobilenet_v1_0.5_160_quant", "imagenet-efficientnet-lite2"),
    ("imagenet-efficientnet-lite1", "imagenet-mobilenet_v1_0.25_128_quant"),
)
#: The paper's claim, for the report (McNeely-White et al. 2020, ImageNet-trained CNNs).
PAPER = (
    "a linear map from one ImageNet CNN's penultimate layer into another's keeps most of the "
    "top-1 accuracy under the second network's own final layer, and for networks with linear "
    "softmax heads over the same classes the map can be computed in closed form from the heads"
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mapper-imagenet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--zoo", help="the ImageNet zoo folder (default $IMAGENET_ZOO_DIR or ../shared/imagenet-zoo)"
    )
    ap.add_argument(
        "--models",
        nargs="+",
        default=[c.name for c in registry.CLASSIFIERS],
        help="classifiers (default: all 8)",
    )
    ap.add_argument(
        "--views",
        type=int,
        default=len(views.VIEWS),
        help=f"augmented views per training photo, 1-{len(views.VIEWS)} "
        f"(default {len(views.VIEWS)}: {', '.join(v.name for v in views.VIEWS)})",
    )
    ap.add_argument("--folds", type=int, default=5, help="k of the k-fold split over photos (default 5)")
    ap.add_argument(
        "--seed", type=int, default=0, help="seed of the folds and the curve's samples (default 0)"
    )
    ap.add_argument(
        "--no-curve", dest="curve", action="store_false", help="skip the top-1 vs fitting inputs curve"
    )
    ap.add_argument(
        "--backend",
        choices=("triton", "local"),
        default="triton",
        help="embed through Triton (started on demand) or in-process (default triton)",
    )
    ap.add_argument("--triton-url", help="use this running Triton instead of starting one")
    ap.add_argument(
        "--cache", default=".cache/imagenet", help="embedding cache folder (default .cache/imagenet)"
    )
    ap.add_argument("--out", default="out/imagenet", help="report folder (default out/imagenet)")
    ap.add_argument(
        "--save-maps",
        action="store_true",
        help="also write every closed-form map, and fitted maps on all photos, to <out>/maps/",
    )
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return ap


def load_material(args: argparse.Namespace, log: Callable[[str], None]) -> imagenet.Material:
    paths, y = photos(args.zoo)
    chosen = [registry.get(n) for n in args.models]
    embeddings = {}
    with classifier_embed(args.backend, models=args.models, triton_url=args.triton_url, log=log) as embed:
        for model in chosen:
            blocks = [
                embed_views(embed, model, paths, v, args.cache, progress=args.progress)
                for v in views.VIEWS[: args.views]
            ]
            embeddings[model.name] = np.stack(blocks)
            log(f"{model.label}: {len(blocks)} views x {len(paths)} photos")
        # The heads are constants of each file, read in-process (by the runtimes already
        # loaded when the embedding was in-process too).
        local = embed if isinstance(embed, LocalEmbed) else LocalEmbed(args.zoo or imagenet_zoo_dir())
        heads = {m.name: (local.runtime(m).W, local.runtime(m).b) for m in chosen}
    return imagenet.Material([m.name for m in chosen], y, embeddings, heads)


def _matrix(res: dict[str, Any], models: list[str], which: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(models)}
    m = np.diag([res["native"][name] for name in models]).astype(float)
    for r in res["pairs"]:
        m[index[r["a"]], index[r["b"]]] = r[which]["top1"]
    return m


def summary(res: dict[str, Any]) -> dict[str, float]:
    native, pairs = res["native"], res["pairs"]
    lower = np.array([min(native[r["a"]], native[r["b"]]) for r in pairs])
    exact = [r for r in pairs if r["closed_form"]["logit_residual"] < 1e-6]
    fitted_kinds = {}
    for kind in ("fitted", "rotation", "towards_rotation"):
        top1 = np.array([r[kind]["top1"] for r in pairs])
        fitted_kinds[f"{kind}_mean_top1"] = float(top1.mean())
        fitted_kinds[f"{kind}_mean_ratio_to_lower_native"] = float((top1 / lower).mean())
    return {
        **fitted_kinds,
        "closed_form_mean_top1": float(np.mean([r["closed_form"]["top1"] for r in res["pairs"]])),
        "closed_form_exact_pairs": len(exact),
        "closed_form_exact_min_agreement_with_a": float(
            min((r["closed_form"]["agree_a"] for r in exact), default=0)
        ),
        "weight_distance_mean": float(np.mean([r["fitted"]["weight_distance"] for r in res["pairs"]])),
        "output_distance_mean": float(np.mean([r["fitted"]["output_distance"] for r in res["pairs"]])),
        "prediction_agreement_mean": float(
            np.mean([r["fitted"]["prediction_agreement"] for r in res["pairs"]])
        ),
    }


def curve_plot(points: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    pairs = list(dict.fromkeys((p["a"], p["b"]) for p in points))
    counts = sorted({p["views"] for p in points})
    styles = dict(zip(counts, [":", "--", "-"][-len(counts) :], strict=False))
    for colour, (a, b) in enumerate(pairs):  # one colour per pair, one line style per view count
        for v in counts:
            mine = [p for p in points if (p["a"], p["b"], p["views"]) == (a, b, v)]
            ax.plot(
                [p["inputs"] for p in mine],
                [p["top1"] for p in mine],
                marker="o",
                color=f"C{colour}",
                linestyle=styles.get(v, "-"),
                label=f"{short(a)} -> {short(b)}, {v} view{'s' * (v > 1)}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("fitting inputs (photos x views)")
    ax.set_ylabel("top-1 of B's head on held-out photos")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_report(
    out: Path, res: dict[str, Any], s: dict[str, float], curve: list[dict[str, Any]] | None
) -> Path:
    """imagenet.md, imagenet.json and the figures of ``res`` and its :func:`summary` ``s``."""
    models = list(res["native"])
    fitted, closed = _matrix(res, models, "fitted"), _matrix(res, models, "closed_form")
    rotation, towards = _matrix(res, models, "rotation"), _matrix(res, models, "towards_rotation")
    heatmaps(
        models,
        {
            "ridge from photos": fitted,
            "rotation from photos": rotation,
            "ridge towards the rotation": towards,
            "closed form from the heads": closed,
        },
        out / "imagenet-top1.png",
        label="top-1 of B's head",
        title="A's embedding mapped into B, classified by B (diagonal: native)",
    )
    zoo_top1 = {c.name: c.top1 for c in registry.CLASSIFIERS}
    lines = [
        "# ImageNet classifiers mapped into each other (the 2020 paper's second half)",
        "",
        f"The paper's claim: {PAPER}.",
        "",
        f"{res['photos']} photos (one per class), {len(models)} classifiers, "
        f"{len(res['pairs'])} ordered pairs. "
        f"Fitted maps: ridge, alpha by photo-disjoint CV, {res['views']} views per training photo, "
        f"{res['folds']}-fold over photos (tested on held-out photos only). Closed-form maps: no photos, "
        "tested on all of them.",
        "",
        "## Native top-1",
        "",
        "| model | dim | top-1 here | zoo README |",
        "|---|---|---|---|",
        *(
            f"| {short(n)} | {registry.get(n).dim} | {res['native'][n]:.3f} | {zoo_top1[n]:.3f} |"
            for n in models
        ),
        "",
        "## Summary",
        "",
        f"- fitted maps: mean top-1 {s['fitted_mean_top1']:.3f}; "
        "mean ratio to the lower native top-1 of the pair "
        f"**{s['fitted_mean_ratio_to_lower_native']:.3f}** (goal 0.75)",
        "- rotation maps (orthogonal Procrustes with one scale, same photos and folds): mean top-1 "
        f"{s['rotation_mean_top1']:.3f}; ratio to the lower native "
        f"{s['rotation_mean_ratio_to_lower_native']:.3f}",
        "- ridge towards the rotation (its penalty pulls towards the rotation, not towards zero): "
        f"mean top-1 {s['towards_rotation_mean_top1']:.3f}; ratio to the lower native "
        f"{s['towards_rotation_mean_ratio_to_lower_native']:.3f}",
        f"- closed form: mean top-1 {s['closed_form_mean_top1']:.3f}; exact (logit residual < 1e-6) on "
        f"{s['closed_form_exact_pairs']} pairs, where it agrees with A's own prediction on at least "
        f"{s['closed_form_exact_min_agreement_with_a']:.3f} of the photos",
        "- fitted vs closed form: relative Frobenius distance of the weights "
        f"{s['weight_distance_mean']:.3f}, of the outputs {s['output_distance_mean']:.3f}; "
        f"same prediction on {s['prediction_agreement_mean']:.3f} "
        "of held-out photos (means over pairs)",
        "",
        "The closed form needs the same classes in the same order and linear heads. It is exact "
        "(every prediction of A kept) when B's centred head has full row rank, i.e. B's embedding has at "
        "least 999 dimensions for 1,000 classes: every 1280-d model here. Into the 256/512/768-d "
        "MobileNet v1 heads it is a least-squares approximation.",
        "",
        "![top-1 heat maps](imagenet-top1.png)",
        "",
        "## Fitted maps: top-1 of B's head (rows A, columns B; diagonal native)",
        "",
        matrix_table(models, fitted),
        "",
        "## Rotation maps: top-1 of B's head",
        "",
        matrix_table(models, rotation),
        "",
        "## Ridge towards the rotation: top-1 of B's head",
        "",
        matrix_table(models, towards),
        "",
        "## Closed-form maps: top-1 of B's head",
        "",
        matrix_table(models, closed),
        "",
    ]
    if curve:
        curve_plot(curve, out / "imagenet-curve.png")
        lines += [
            "## How much data the fitted maps need",
            "",
            "Top-1 on the first fold's held-out photos against the fitting inputs (photos x views):",
            "",
            "![curve](imagenet-curve.png)",
            "",
            "| A -> B | photos | views | inputs | top-1 |",
            "|---|---|---|---|---|",
            *(
                f"| {short(p['a'])} -> {short(p['b'])} | {p['photos']} | {p['views']} | {p['inputs']} | "
                f"{p['top1']:.3f} |"
                for p in curve
            ),
            "",
        ]
    path = out / "imagenet.md"
    path.write_text("\n".join(lines))
    (out / "imagenet.json").write_text(json.dumps({**res, "summary": s, "curve": curve}, indent=1))
    return path


def save_maps(out: Path, m: imagenet.Material, views_used: int) -> None:
    folder = out / "maps"
    folder.mkdir(parents=True, exist_ok=True)
    for a in m.models:
        targets = [b for b in m.models if b != a]
        for b, fit in imagenet.fit_maps(m, a, targets, np.arange(len(m.y)), views_used).items():
            mapfile.save(imagenet.closed_form(m, a, b), folder / f"{a}--{b}--closed-form.safetensors")
            mapfile.save(fit, folder / f"{a}--{b}--fitted.safetensors")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.zoo:  # the Triton models read it from the environment
        os.environ["IMAGENET_ZOO_DIR"] = str(Path(args.zoo).resolve())
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    m = load_material(args, log)
    res = imagenet.experiment(m, folds=args.folds, views=args.views, seed=args.seed, progress=args.progress)
    curve = None
    if args.curve:
        pairs = [p for p in CURVE_PAIRS if p[0] in m.models and p[1] in m.models] or [tuple(m.models[:2])]
        curve = imagenet.curve(
            m,
            pairs,
            view_counts=sorted({1, min(4, args.views), args.views}),
            seed=args.seed,
            progress=args.progress,
        )
    s = summary(res)
    report = write_report(out, res, s, curve)
    if args.save_maps:
        save_maps(out, m, args.views)
    log(
        f"fitted: mean top-1 ratio to the lower native {s['fitted_mean_ratio_to_lower_native']:.3f}; "
        f"closed form exact on {s['closed_form_exact_pairs']} pairs; report {report}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
