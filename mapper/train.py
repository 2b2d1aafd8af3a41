"""mapper-train: fit maps between face CNNs, evaluate them the papers' way, publish them.

Steps: embed every image with every model (through Triton, cached on disk and resumable;
or from precomputed embeddings), split identities into a fitting and an evaluation part,
fit linear / rotation / hub (and MLP) maps for every ordered model pair on the fitting
part, evaluate cross-model verification on all pairs of the evaluation part (IJB-C file
layout), measure how few fitting pairs suffice and what a leaked template reveals, write
a report, and publish the maps with their calibration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
import tomllib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, io
from .cache import EmbeddingCache, embed_images
from .crossmodel import SUMMARY_FARS, Protocol, cross_model_eval, fit_maps
from .embed import FaceEmbedder, LocalBackend, TritonBackend
from .hub import CanonicalSpace
from .maps import EmbeddingMap
from .metrics import STANDARD_FARS, evaluate, tar_at_far_strict
from .models import BUILTIN
from .protocols import detections_from_landmarks, lfw_all_pairs, read_ijbc, write_ijbc
from .report import fewshot_plot, short, write_report
from .validation import l2_normalize
from .zoo import face_zoo_dir, identity_of, identity_split

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS: dict[str, Any] = {
    "images": 1500,
    "full": False,
    "models": [m.name for m in BUILTIN],
    "embeddings": None,
    "backend": "triton",
    "triton_url": None,
    "fit_fraction": 0.5,
    "seed": 0,
    "kinds": ["linear", "rotation", "hub"],
    "max_impostors": 10_000_000,
    "convention": "strict",
    "out": "out/train",
    "cache": str(ROOT / ".cache" / "embeddings.sqlite"),
    "publish": None,
    "admin_token": None,
    "store": None,
    "fewshot": True,
    "security": True,
    "progress": True,
    "ijbc": None,
    "ijbc_images": None,
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mapper-train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults come from --config (TOML, keys as the long flags with _), then the flags. "
        "Example: mapper-train --images 1500 --publish 127.0.0.1:50051 --admin-token $TOKEN",
    )
    ap.add_argument("--config", help="TOML file of settings (e.g. images = 3000, kinds = ['linear'])")
    ap.add_argument("--images", type=int, help="LFW images used, whole identities, seeded (default 1500)")
    ap.add_argument("--full", action="store_true", default=None, help="all 7,701 LFW images")
    ap.add_argument("--models", nargs="+", help="face models (default: the four of the face zoo)")
    ap.add_argument(
        "--embeddings", help="precomputed embeddings .npz (names + one array per model): no Triton"
    )
    ap.add_argument(
        "--backend", choices=("triton", "local"), help="embed through Triton (default) or in-process"
    )
    ap.add_argument("--triton-url", help="use this running Triton instead of starting one")
    ap.add_argument(
        "--ijbc", metavar="DIR", help="evaluate on the IJB-C 1:1 files in DIR (maps fitted on LFW)"
    )
    ap.add_argument("--ijbc-images", metavar="DIR", help="root of the IJB-C image names (default: --ijbc)")
    ap.add_argument("--fit-fraction", type=float, help="share of identities used to fit (default 0.5)")
    ap.add_argument("--seed", type=int, help="seed of the identity split and samples (default 0)")
    ap.add_argument("--kinds", nargs="+", choices=("linear", "rotation", "hub", "mlp"), help="map kinds")
    ap.add_argument("--max-impostors", type=int, help="impostor pairs sampled for evaluation (default 10M)")
    ap.add_argument("--convention", choices=("strict", "ijbc"), help="TAR@FAR convention (default strict)")
    ap.add_argument("--out", help="report folder (default out/train)")
    ap.add_argument("--cache", help="embedding cache file (default .cache/embeddings.sqlite)")
    ap.add_argument("--publish", metavar="HOST:PORT", help="publish the maps to a running mapper-serve")
    ap.add_argument("--admin-token", help="admin token of that server")
    ap.add_argument("--store", help="write the maps into this SQLite store file instead")
    ap.add_argument(
        "--no-fewshot", dest="fewshot", action="store_false", default=None, help="skip the few-shot curve"
    )
    ap.add_argument(
        "--no-security", dest="security", action="store_false", default=None, help="skip leak test"
    )
    ap.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="no progress bars"
    )
    return ap


def settings(argv: list[str] | None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    cfg = dict(DEFAULTS)
    if args.config:
        with open(args.config, "rb") as fh:
            loaded = tomllib.load(fh)
        unknown = set(loaded) - set(DEFAULTS)
        if unknown:
            raise SystemExit(f"{args.config}: unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        cfg.update(loaded)
    cfg.update({k: v for k, v in vars(args).items() if v is not None and k != "config"})
    return cfg


def choose_images(names: list[str], n: int | None, seed: int) -> list[str]:
    """Whole identities, seeded, until ``n`` images; identities with 2+ images first so that
    the subset has genuine pairs."""
    if n is None or n >= len(names):
        return sorted(names)
    by_id: dict[str, list[str]] = {}
    for name in names:
        by_id.setdefault(identity_of(name), []).append(name)
    rng = np.random.default_rng(seed)
    ids = sorted(by_id)
    multi = [i for i in ids if len(by_id[i]) > 1]
    single = [i for i in ids if len(by_id[i]) == 1]
    order = [*rng.permutation(multi), *rng.permutation(single)]
    chosen: list[str] = []
    for i in order:
        if len(chosen) >= n:
            break
        chosen += by_id[i]
    return sorted(chosen)


def embed_all(
    cfg: dict[str, Any],
    names: list[str],
    log: Any,
    paths: list[Path] | None = None,
    landmarks: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """{model: (n, d)} for ``names`` (LFW images unless ``paths`` are given), plus
    ``__failed__``: the rows any model failed on."""
    if cfg["embeddings"]:
        with np.load(cfg["embeddings"]) as data:
            index = {str(n): i for i, n in enumerate(data["names"])}
            missing = [n for n in names if n not in index]
            if missing:
                raise SystemExit(
                    f"{cfg['embeddings']}: no embeddings for {len(missing)} images, e.g. {missing[0]}"
                )
            rows = [index[n] for n in names]
            return {m: data[m][rows].astype(np.float32) for m in cfg["models"]}
    zoo = face_zoo_dir()
    paths = paths or [zoo / "lfw" / "images" / n for n in names]
    out = {}
    with ExitStack() as stack:
        if cfg["backend"] == "local":
            embedder = FaceEmbedder(LocalBackend(zoo / "models"))
        else:
            url = cfg["triton_url"]
            if not url:
                from .triton import TritonServer

                log(f"starting Triton with {len(cfg['models'])} models (model_repository/) ...")
                server = stack.enter_context(
                    TritonServer(ROOT / "model_repository", models=[*cfg["models"], "yunet-2023mar-int8bq"])
                )
                url = server.url
            from .triton_client import TritonClient

            client = stack.enter_context(TritonClient(url, concurrency=4, batch_size=16))
            embedder = FaceEmbedder(TritonBackend(client))
        cache = EmbeddingCache(cfg["cache"])
        failed: set[int] = set()
        for m in cfg["models"]:
            out[m], bad = embed_images(
                embedder, paths, m, cache, progress=cfg["progress"], landmarks=landmarks
            )
            failed |= set(bad)
        out["__failed__"] = np.array(sorted(failed), dtype=np.int64)
    return out


def calibrate(m: EmbeddingMap, x_src: np.ndarray, x_dst: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    """Score thresholds at the standard FARs (strict), measured on cross-model pairs of the
    fitting images: stored with the map so the service can decide same/different."""
    a = m.transform(x_src)
    b = l2_normalize(x_dst)
    iu = np.triu_indices(len(ids), 1)
    scores = (a @ b.T)[iu]
    same = (ids[:, None] == ids[None, :])[iu]
    return {
        f"{f:g}": tar_at_far_strict(scores[same], scores[~same], f)[2]
        for f in STANDARD_FARS
        if f * (~same).sum() >= 1
    }


def fewshot(
    emb_fit: dict, ids_fit: np.ndarray, emb_eval: dict, protocol: Protocol, seed: int, progress: bool
) -> dict[str, Any]:
    """Mean cross-model TAR@FAR=1e-2 against the number of fitting identities / pairs.

    Evaluated on every genuine pair and at most 1,000,000 impostor pairs of the protocol
    (plenty for FAR 1e-2), so the curve costs a few seconds per point at any scale.
    """
    from tqdm import tqdm

    unique, counts = np.unique(ids_fit, return_counts=True)
    # Small samples draw people with 2+ images (pairs of the same people, as the papers fit);
    # the last point uses every fitting image.
    multi = unique[counts >= 2]
    grid = [n for n in (5, 10, 25, 50, 100, 250, 500) if n < multi.size] + [unique.size]
    rng = np.random.default_rng(seed)
    impostors = np.flatnonzero(~protocol.labels)
    if impostors.size > 1_000_000:
        keep = np.sort(
            np.r_[np.flatnonzero(protocol.labels), rng.choice(impostors, 1_000_000, replace=False)]
        )
        protocol = Protocol(
            protocol.template_ids, protocol.media_ids, protocol.pairs[keep], protocol.labels[keep]
        )
    curve: dict[str, Any] = {
        "far": 1e-2,
        "identities": [],
        "pairs": [],
        "tar": {"linear": [], "rotation": []},
    }
    native = cross_model_eval(emb_eval, protocol, {}, kinds=("none",), fars=(1e-2,), progress=False)
    curve["native"] = float(np.nanmean(np.diag(native.tar["none"][1e-2])))
    for n_ids in tqdm(grid, desc="few-shot", disable=not progress):
        pool = unique if n_ids == unique.size else multi
        chosen = np.isin(ids_fit, rng.choice(pool, n_ids, replace=False))
        maps = fit_maps(
            {m: e[chosen] for m, e in emb_fit.items()},
            ("linear", "rotation"),
            groups=ids_fit[chosen] if n_ids >= 5 else None,
            progress=False,
        )
        res = cross_model_eval(
            emb_eval, protocol, maps, kinds=("linear", "rotation"), fars=(1e-2,), progress=False
        )
        curve["identities"].append(int(n_ids))
        curve["pairs"].append(int(chosen.sum()))
        for kind in ("linear", "rotation"):
            curve["tar"][kind].append(res.summary()[kind][1e-2])
    return curve


def template_security(emb_eval: dict, ids: np.ndarray, maps: dict) -> dict[str, Any]:
    """A template leaked from A, translated into B, searched in B's gallery (one image per
    person): rank-1 identification and TAR@FAR=1e-3, without and with the linear map."""
    first = {}
    for k, person in enumerate(ids):
        first.setdefault(person, k)
    counts = {p: int((ids == p).sum()) for p in first}
    gallery = np.array([first[p] for p in first if counts[p] > 1])
    probes = np.array([k for k, p in enumerate(ids) if counts[p] > 1 and first[p] != k])
    g_ids, p_ids = ids[gallery], ids[probes]
    models = list(emb_eval)
    out = {"gallery": int(gallery.size), "probes": int(probes.size), "pairs": {}}
    for a in models:
        for b in models:
            if a == b:
                continue
            g = l2_normalize(emb_eval[b][gallery])
            row = {}
            for label, probe in (
                ("without map", l2_normalize(emb_eval[a][probes])),
                ("with linear map", maps[a, b, "linear"].transform(emb_eval[a][probes])),
            ):
                d = min(probe.shape[1], g.shape[1])
                scores = probe[:, :d] @ g[:, :d].T
                rank1 = float((g_ids[np.argmax(scores, axis=1)] == p_ids).mean())
                same = p_ids[:, None] == g_ids[None, :]
                tar = evaluate(scores.ravel(), same.ravel(), (1e-3,)).tar[1e-3]
                row[label] = {"rank1": rank1, "tar_far1e-3": tar}
            out["pairs"][f"{a} -> {b}"] = row
    return out


def security_table(sec: dict[str, Any]) -> str:
    lines = [
        f"Gallery: one image of each of {sec['gallery']} people (model B); {sec['probes']} leaked probe "
        "templates (model A).",
        "",
        "| A -> B | rank-1 without | rank-1 with map | TAR@1e-3 without | TAR@1e-3 with map |",
        "|---|---|---|---|---|",
    ]
    for pair, row in sec["pairs"].items():
        a, b = pair.split(" -> ")
        w, m = row["without map"], row["with linear map"]
        lines.append(
            f"| {short(a)} -> {short(b)} | {w['rank1']:.3f} | {m['rank1']:.3f} | "
            f"{w['tar_far1e-3']:.3f} | {m['tar_far1e-3']:.3f} |"
        )
    return "\n".join(lines)


def publish(cfg: dict[str, Any], blobs: list[bytes], log: Any) -> list[str]:
    """Publish map files into the store file and/or the running service."""
    published = []
    if cfg["store"]:
        from service.store import SQLiteMapStore

        store = SQLiteMapStore(cfg["store"])
        for blob in blobs:
            ref = store.publish(blob).ref
            published.append(f"{ref.map_id} v{ref.version}")
    if cfg["publish"]:
        from service.client import MapperClient

        with MapperClient(cfg["publish"], admin_token=cfg["admin_token"]) as client:
            for blob in blobs:
                ref = client.put_mapping(blob).ref
                published.append(f"{ref.map_id} v{ref.version} -> {cfg['publish']}")
    log(f"published {len(published)} maps")
    return published


def main(argv: list[str] | None = None) -> int:
    cfg = settings(argv)
    t0 = time.perf_counter()
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    zoo = face_zoo_dir()
    all_names = sorted(p.name for p in (zoo / "lfw" / "images").glob("*.jpg"))
    names = choose_images(all_names, None if cfg["full"] else cfg["images"], cfg["seed"])
    log(f"{len(names)} LFW images of {len({identity_of(n) for n in names})} people; models: {cfg['models']}")
    emb = embed_all(cfg, names, log)
    failed = emb.pop("__failed__", np.zeros(0, np.int64))
    keep = np.setdiff1d(np.arange(len(names)), failed)
    if failed.size:
        log(f"{failed.size} images had no face for some model; dropped: {[names[i] for i in failed[:5]]} ...")
    names = [names[i] for i in keep]
    emb = {m: e[keep] for m, e in emb.items()}
    ids = np.array([identity_of(n) for n in names])

    unique = np.unique(ids)
    if cfg["ijbc"]:  # fit on every chosen LFW image, evaluate on the IJB-C protocol
        fit = np.ones(len(ids), bool)
    else:
        fit = identity_split(np.array(names), cfg["fit_fraction"], cfg["seed"])
    fit_ids = np.unique(ids[fit])
    emb_fit = {m: e[fit] for m, e in emb.items()}
    maps = fit_maps(emb_fit, tuple(cfg["kinds"]), groups=ids[fit], progress=cfg["progress"])
    hub: CanonicalSpace | None = maps.pop(("*", "*", "hub-space"), None)

    if cfg["ijbc"]:
        ijbc = read_ijbc(cfg["ijbc"])
        root = Path(cfg["ijbc_images"] or cfg["ijbc"])
        landmarks = None
        if ijbc.landmarks is not None:
            landmarks = detections_from_landmarks(ijbc.landmarks, ijbc.scores)
        image_names = [str(n) for n in ijbc.images]
        emb_eval = embed_all(cfg, image_names, log, [root / n for n in image_names], landmarks)
        no_face = emb_eval.pop("__failed__", np.zeros(0))
        log(
            f"IJB-C: {len(image_names)} images, {no_face.size} without a face (they add nothing to templates)"
        )
        eval_what = f"the IJB-C 1:1 protocol in {cfg['ijbc']}"
    else:
        emb_eval = {m: e[~fit] for m, e in emb.items()}
        # All pairs of the evaluation images, written in the IJB-C layout and read back, so
        # LFW and IJB-C go through one code path.
        eval_names = np.array(names)[~fit]
        write_ijbc(
            out / "protocol", lfw_all_pairs(eval_names, max_impostors=cfg["max_impostors"], seed=cfg["seed"])
        )
        ijbc = read_ijbc(out / "protocol")
        eval_what = f"all pairs of {(~fit).sum()} LFW images of {unique.size - fit_ids.size} other people"
    protocol = Protocol(ijbc.template_ids, ijbc.media_ids, ijbc.pairs, ijbc.labels)
    log(
        f"fitted on {fit.sum()} images of {fit_ids.size} people; evaluating on {eval_what}: "
        f"{protocol.labels.sum():,} genuine, {(~protocol.labels).sum():,} impostor pairs"
    )
    res = cross_model_eval(
        emb_eval,
        protocol,
        maps,
        kinds=("none", *cfg["kinds"]),
        convention=cfg["convention"],
        progress=cfg["progress"],
    )

    sections = []
    extra: dict[str, Any] = {}
    if cfg["fewshot"]:
        curve = fewshot(emb_fit, ids[fit], emb_eval, protocol, cfg["seed"], cfg["progress"])
        fewshot_plot(curve, out / "fewshot.png")
        rows = "\n".join(
            f"| {i} | {p} | {lin:.4f} | {rot:.4f} |"
            for i, p, lin, rot in zip(
                curve["identities"],
                curve["pairs"],
                curve["tar"]["linear"],
                curve["tar"]["rotation"],
                strict=True,
            )
        )
        sections.append(
            (
                "How little data is enough",
                "Mean cross-model TAR@FAR=1e-2 (strict) over all ordered pairs, maps fitted on a seeded "
                f"sample of the fitting identities; native mean {curve['native']:.4f}.\n\n"
                "![few-shot curve](fewshot.png)\n\n| identities | pairs | linear | rotation |\n"
                "|---|---|---|---|\n" + rows,
            )
        )
        extra["fewshot"] = curve
    if cfg["security"] and "linear" in cfg["kinds"] and not cfg["ijbc"]:
        sec = template_security(emb_eval, ids[~fit], maps)
        sections.append(("Template security: a leaked template, translated", security_table(sec)))
        extra["security"] = sec

    versions = {"mapper": __version__, "python": platform.python_version(), "numpy": np.__version__}
    provenance = {
        "dataset": f"LFW ({len(names)} images)",
        "fit_images": int(fit.sum()),
        "fit_identities": int(fit_ids.size),
        "seed": cfg["seed"],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": versions,
    }
    # Each map file is serialised once: written to the report folder and published as is.
    sub = np.flatnonzero(fit)[:2000]
    files = {}
    for (a, b, kind), m in maps.items():
        if kind == "hub":
            continue  # served through the hub space itself
        calibration = calibrate(m, emb[a][sub], emb[b][sub], ids[sub])
        files[f"{a}__{b}.{kind}.safetensors"] = io.dumps(m, {**provenance, "calibration": calibration})
    if hub is not None:
        files["hub.safetensors"] = io.dumps(hub, provenance)
    maps_dir = out / "maps"
    maps_dir.mkdir(exist_ok=True)
    for name, blob in files.items():
        io.write(maps_dir / name, blob)
    published = publish(cfg, list(files.values()), log) if cfg["store"] or cfg["publish"] else []

    extra["config"] = {k: v for k, v in cfg.items() if k != "admin_token"}
    extra["provenance"] = provenance
    extra["published"] = published
    extra["run_seconds"] = round(time.perf_counter() - t0, 1)
    description = (
        f"Maps fitted on {fit.sum()} LFW images of {fit_ids.size} people and evaluated on {eval_what} "
        f"(seed {cfg['seed']}). Row A's side is embedded by A and mapped into B's space; column B's side "
        "is embedded by B. Run: `mapper-train " + " ".join(argv or sys.argv[1:]) + "`."
    )
    report = write_report(
        out,
        res,
        title="Cross-model face verification",
        description=description,
        extra_sections=sections,
        extra_json=extra,
    )
    (out / "config.json").write_text(json.dumps(extra["config"], indent=1, default=str))
    s = res.summary()
    print(
        f"\nMean TAR ({res.convention}); papers (IJB-C, 10 CNNs) at 1e-2: native 0.96, linear 0.95, rot. 0.91"
    )
    print(f"{'':<10}" + "".join(f"{'FAR=' + format(f, 'g'):>12}" for f in SUMMARY_FARS))
    for kind, values in s.items():
        print(f"{kind:<10}" + "".join(f"{values[f]:>12.4f}" for f in SUMMARY_FARS))
    log(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
