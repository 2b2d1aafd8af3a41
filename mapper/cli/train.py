"""mapper-train: fit maps between face CNNs, evaluate them the papers' way, publish them.

Steps: embed every image with every model (through Triton, cached on disk and resumable;
or from precomputed embeddings), split identities into a fitting and an evaluation part,
fit linear / rotation / hub maps (the papers') and tuned maps (per ordered model pair, the
map and scoring that verify best at FAR 1e-3 and 1e-4 by identity-disjoint CV) on the
fitting part, evaluate cross-model verification on all pairs of the evaluation part
(IJB-C file layout), both as Translate's output under a plain cosine and as Compare scores
it, measure how few fitting pairs suffice, what each method adds (--ablation) and what a
leaked template reveals, write a report, and publish the maps with their calibration.

When the old model cannot run again, fit from two photos of each person (--pairing
identity) or from the old gallery and new enrolments (--old-gallery, --new-gallery).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import textwrap
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np

from mapper import __version__
from mapper.core import mapfile, twoway
from mapper.core.calibration import Calibration
from mapper.core.hub import CanonicalSpace
from mapper.core.kinds import TRAINABLE
from mapper.core.maps import EmbeddingMap
from mapper.core.twoway import reverse_of
from mapper.datasets.face_zoo import choose_images, identity_of, identity_split, lfw_images_dir
from mapper.datasets.gallery import read_gallery
from mapper.errors import InvalidInput
from mapper.eval.crossmodel import (
    SUMMARY_FARS,
    CrossModelResults,
    Scored,
    cross_model_eval,
    fit_maps,
    gallery_eval,
)
from mapper.eval.pairing import NO_PAIRS, PAIRINGS, Pairs, gallery_pairs, image_pairs, make_pairs
from mapper.eval.protocols import (
    VerificationProtocol,
    detections_from_landmarks,
    lfw_all_pairs,
    read_ijbc,
    write_ijbc,
)
from mapper.eval.report import PAPERS, fewshot_plot, pairing_plot, write_report
from mapper.eval.selection import COHORT_FRACTION, cohort_rows
from mapper.eval.studies import (
    ABLATION,
    FEWSHOT_DRAWS,
    FewShot,
    ablation,
    ablation_table,
    fewshot_table,
    pairing_study,
    pairing_table,
    security_table,
    template_security,
    vendor_joins,
    vendor_table,
)
from mapper.eval.thresholds import (
    CALIBRATION_FOLDS,
    CONFIDENCE,
    calibrate,
    far_check,
    far_table,
    gallery_far_check,
    native_thresholds,
)
from mapper.faces import registry
from mapper.faces.cache import EmbeddingCache, embed_images
from mapper.serving.catalog import map_id_of
from mapper.triton.embedding import face_embedder

Log = Callable[[str], None]
#: Environment variable read for the admin token when no token file is given.
TOKEN_ENV = "MAPPER_ADMIN_TOKEN"


@dataclass
class TrainConfig:
    """Every setting of a run; from a TOML file (keys as below), then the flags."""

    images: int = 1500
    full: bool = False
    models: list[str] = field(default_factory=lambda: list(registry.DEFAULT_MODELS))
    embeddings: str | None = None
    backend: str = "triton"
    triton_url: str | None = None
    fit_fraction: float = 0.5
    cohort_fraction: float = COHORT_FRACTION  # of the fitting people: S-norm's cohort, fits no map
    seed: int = 0
    kinds: list[str] = field(default_factory=lambda: ["linear", "rotation", "hub", "tuned"])
    max_impostors: int = 10_000_000
    convention: str = "strict"
    out: str = "out/train"
    cache: str = ".cache/embeddings.sqlite"
    publish: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    admin_token_file: str | None = None
    store: str | None = None
    pairing: str = "image"  # how fitting pairs are made: one photo by both models, or two photos of a person
    old_gallery: str | None = None  # Parquet: models[0]'s templates of the old photos
    new_gallery: str | None = None  # Parquet: models[1]'s templates of new photos
    person_column: str = "person"
    id_column: str = "id"
    embedding_column: str = "embedding"
    mirror: bool = False  # also fit on each fitting image's mirrored face
    fewshot: bool = True
    fewshot_draw: str = "images"  # how the few-shot curve samples its fitting pairs
    fewshot_methods: list[str] = field(default_factory=list)  # ablation methods on the curve too
    pairing_study: bool = False  # TAR against pairs, image vs identity pairs
    ablation: list[str] | None = None  # methods of the ablation study ([] = all)
    security: bool = True
    joining: str | None = None  # a model (or "last") that joins a hub of the others
    progress: bool = True
    ijbc: str | None = None
    ijbc_images: str | None = None

    def token(self) -> str | None:
        """The admin token: --admin-token-file, else --admin-token, else $MAPPER_ADMIN_TOKEN."""
        if self.admin_token_file:
            return Path(self.admin_token_file).read_text().strip()
        return self.admin_token or os.environ.get(TOKEN_ENV)

    def public(self) -> dict[str, Any]:
        """The settings as written into reports: never the token."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "admin_token"}


@dataclass
class Split:
    """The images of a run, their identities and which of them fit the maps."""

    names: list[str]
    ids: np.ndarray  # (n,) identity per image
    fit: np.ndarray  # (n,) bool
    embeddings: dict[str, np.ndarray]  # {model: (n, d)}
    pairing: str = "image"
    seed: int = 0
    #: {model: the fitting images' mirrored faces' embeddings}, row for row (--mirror)
    mirrored: dict[str, np.ndarray] | None = None

    @cached_property
    def fitting(self) -> dict[str, np.ndarray]:
        """{model: the fitting images' embeddings}, sliced once for every step that fits."""
        return {m: e[self.fit] for m, e in self.embeddings.items()}

    @cached_property
    def pairs(self) -> Pairs:
        """The fitting images' pairs, made as ``pairing`` says."""
        return make_pairs(self.pairing, self.fitting, self.ids[self.fit], seed=self.seed)

    @cached_property
    def mirrored_pairs(self) -> Pairs | None:
        """The mirrored faces' image pairs, row for row with :attr:`pairs` (--mirror)."""
        return None if self.mirrored is None else image_pairs(self.mirrored, self.ids[self.fit])

    @cached_property
    def fitting_pairs(self) -> Pairs:
        """What the maps fit on: :attr:`pairs`, then the mirrored faces' pairs when there
        are any (same people, so CV folds keep them together)."""
        return self.pairs if self.mirrored_pairs is None else self.pairs.concat(self.mirrored_pairs)


@dataclass
class Evaluation:
    results: CrossModelResults
    protocol: VerificationProtocol
    embeddings: dict[str, np.ndarray]  # the evaluation images' embeddings
    what: str  # a phrase naming what was evaluated


def _default(name: str) -> str:
    """TrainConfig's default for ``name`` as --help shows it: the dataclass is the one place
    defaults are written."""
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(value, list):
        return " ".join(value)
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mapper-train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults come from --config (TOML, keys as the long flags with _), then the flags. "
        f"Example: {TOKEN_ENV}=... mapper-train --images 1500 --publish 127.0.0.1:50051",
    )
    ap.add_argument("--config", help="TOML file of settings (e.g. images = 3000, kinds = ['linear'])")
    ap.add_argument(
        "--images", type=int, help=f"LFW images used, whole identities, seeded (default {_default('images')})"
    )
    ap.add_argument("--full", action="store_true", default=None, help="all 7,701 LFW images")
    ap.add_argument(
        "--models",
        nargs="+",
        help="face models (default: the face zoo's first four; 'all': every registered model)",
    )
    ap.add_argument(
        "--embeddings",
        help="precomputed embeddings .npz (names + one array per model): no Triton; images are chosen "
        "among its names",
    )
    ap.add_argument(
        "--backend",
        choices=("triton", "local"),
        help=f"embed through Triton or in-process (default {_default('backend')})",
    )
    ap.add_argument("--triton-url", help="use this running Triton instead of starting one")
    ap.add_argument(
        "--ijbc", metavar="DIR", help="evaluate on the IJB-C 1:1 files in DIR (maps fitted on LFW)"
    )
    ap.add_argument("--ijbc-images", metavar="DIR", help="root of the IJB-C image names (default: --ijbc)")
    ap.add_argument(
        "--fit-fraction",
        type=float,
        help=f"share of identities used to fit (default {_default('fit_fraction')})",
    )
    ap.add_argument(
        "--cohort-fraction",
        type=float,
        help="share of the fitting people set aside as S-norm's cohort: a tuned map scored by S-norm "
        "is fitted without them and its file holds second moments of theirs only, never of the people "
        f"it was fitted on. Use people who agreed to it; 0 fits on everyone (default "
        f"{_default('cohort_fraction')})",
    )
    ap.add_argument(
        "--seed", type=int, help=f"seed of the identity split and samples (default {_default('seed')})"
    )
    ap.add_argument(
        "--kinds",
        nargs="+",
        choices=TRAINABLE,
        help=f"map kinds (default: {_default('kinds')}; tuned is chosen per pair by CV)",
    )
    ap.add_argument(
        "--max-impostors",
        type=int,
        help=f"impostor pairs sampled for evaluation (default {_default('max_impostors')})",
    )
    ap.add_argument(
        "--convention",
        choices=("strict", "ijbc"),
        help=f"TAR@FAR convention (default {_default('convention')})",
    )
    ap.add_argument("--out", help=f"report folder (default {_default('out')})")
    ap.add_argument("--cache", help=f"embedding cache file (default {_default('cache')})")
    ap.add_argument("--publish", metavar="HOST:PORT", help="publish the maps to a running mapper-serve")
    ap.add_argument("--admin-token-file", help=f"file holding that server's admin token (else ${TOKEN_ENV})")
    ap.add_argument(
        "--admin-token", help=f"the token itself (visible in ps: prefer the file or ${TOKEN_ENV})"
    )
    ap.add_argument("--store", help="write the maps into this store: a SQLite file or postgresql://...")
    ap.add_argument(
        "--no-fewshot", dest="fewshot", action="store_false", default=None, help="skip the few-shot curve"
    )
    ap.add_argument(
        "--pairing",
        choices=(*PAIRINGS, "none"),
        help="how fitting pairs are made: 'image', both models' templates of one photo (the papers'); "
        "'identity', A's template of one photo and B's of another photo of the same person, as after a "
        "vendor switch when the old model cannot run again: each fitting person's photos are split into "
        "an old (A) and a new (B) half, no photo on both sides. The hub and --joining need image pairs; "
        "'none' (nothing links the galleries) is refused: no method tried works "
        f"(default {_default('pairing')})",
    )
    gal = ap.add_argument_group(
        "fitting from galleries",
        textwrap.fill(
            "When the old model can no longer run: its gallery (with a person per template) and new "
            "enrolments by the new model, of other photos. --models names the two: OLD NEW. The people "
            "in both are split by --fit-fraction; the maps fit on identity pairs of the fitting people "
            "and are evaluated across the galleries on the others. Parquet as mapper-migrate reads it "
            "(docs/guides/pairing.md).",
            width=88,
            break_on_hyphens=False,
        ),
    )
    gal.add_argument("--old-gallery", metavar="PARQUET", help="the old model's templates (file or folder)")
    gal.add_argument("--new-gallery", metavar="PARQUET", help="the new model's templates of the same people")
    gal.add_argument("--person-column", help=f"who each template is (default {_default('person_column')})")
    gal.add_argument("--id-column", help=f"template id (default {_default('id_column')})")
    gal.add_argument("--embedding-column", help=f"the template (default {_default('embedding_column')})")
    ap.add_argument(
        "--mirror",
        action="store_true",
        default=None,
        help="also fit on every fitting image's face mirrored left-right: a second pair per image "
        "(needs the images, not --embeddings)",
    )
    ap.add_argument(
        "--fewshot-draw",
        choices=FEWSHOT_DRAWS,
        help="few-shot samples: random fitting images (default), or every image of fewer people",
    )
    ap.add_argument(
        "--fewshot-methods",
        nargs="+",
        metavar="METHOD",
        help="ablation methods (see --ablation) to put on the few-shot curve beside the kinds",
    )
    ap.add_argument(
        "--ablation",
        nargs="*",
        metavar="METHOD",
        help="also fit and evaluate each method alone, or only those named: "
        + " ".join(ABLATION)
        + " (+rescale: residual rescaling; /centred, /snorm: Compare's scoring)",
    )
    ap.add_argument(
        "--pairing-study",
        action="store_true",
        default=None,
        help="also draw mean TAR at FAR 1e-2/1e-3/1e-4 against the number of fitting pairs, for image "
        "and for identity pairs: how many re-enrolled people a migration needs",
    )
    ap.add_argument(
        "--no-security", dest="security", action="store_false", default=None, help="skip leak test"
    )
    ap.add_argument(
        "--joining",
        metavar="MODEL",
        help="study a new vendor: MODEL (or 'last') joins a hub of the other models with one fit, "
        "compared with refitting the whole hub",
    )
    ap.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="no progress bars"
    )
    return ap


def load_config(argv: list[str] | None) -> TrainConfig:
    """TrainConfig from --config's TOML, overridden by the flags given."""
    args = build_parser().parse_args(argv)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    settings: dict[str, Any] = {}
    if args.config:
        with open(args.config, "rb") as fh:
            settings = tomllib.load(fh)
        unknown = set(settings) - known
        if unknown:
            raise SystemExit(f"{args.config}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
    settings.update({k: v for k, v in vars(args).items() if v is not None and k != "config"})
    if settings.get("models") == ["all"]:
        settings["models"] = list(registry.load())
    for key in ("ablation", "fewshot_methods"):
        unknown = set(settings.get(key) or ()) - set(ABLATION)
        if unknown:  # before hours of work, not after
            raise SystemExit(f"{key}: unknown methods {sorted(unknown)}; known: {' '.join(ABLATION)}")
    if settings.get("pairing") == "none":
        raise SystemExit(NO_PAIRS)
    if settings.get("old_gallery") or settings.get("new_gallery"):
        _check_galleries(settings)
    if settings.get("pairing", "image") != "image":
        if settings.get("mirror"):
            raise SystemExit("--mirror adds image pairs of each photo: drop it with --pairing identity")
        if settings.get("joining"):
            raise SystemExit("--joining studies the hub, which needs --pairing image")
        if "kinds" not in settings:  # the default kinds, less the hub
            settings["kinds"] = [k for k in TrainConfig().kinds if k != "hub"]
        elif "hub" in settings["kinds"]:
            raise SystemExit(
                "the hub fits every model on the same photos: drop hub from --kinds with --pairing identity"
            )
    if settings.get("mirror") and settings.get("embeddings"):
        raise SystemExit("--mirror embeds mirrored faces, so it needs the images: drop --embeddings")
    if settings.get("fewshot_draw", "images") not in FEWSHOT_DRAWS:
        raise SystemExit(f"fewshot_draw must be one of {FEWSHOT_DRAWS}, got {settings['fewshot_draw']!r}")
    if not 0 <= settings.get("cohort_fraction", COHORT_FRACTION) < 0.5:
        raise SystemExit("--cohort-fraction must be at least 0 and below 0.5 (0.1 is the default)")
    return TrainConfig(**settings)


def _check_galleries(settings: dict[str, Any]) -> None:
    """Settings of a run from galleries: both galleries, two models, identity pairs, and
    none of the steps that need photos embedded by both models."""
    if not (settings.get("old_gallery") and settings.get("new_gallery")):
        raise SystemExit("fitting from galleries needs both --old-gallery and --new-gallery")
    if len(settings.get("models", ())) != 2:
        raise SystemExit("name the galleries' two models: --models OLD NEW")
    if settings.get("pairing", "identity") != "identity":
        raise SystemExit("galleries hold different photos of each person: their pairs are identity pairs")
    photos = (
        "embeddings",
        "ijbc",
        "mirror",
        "ablation",
        "joining",
        "fewshot_methods",
        "full",
        "images",
        "pairing_study",
    )
    given = [f"--{k.replace('_', '-')}" for k in photos if settings.get(k) not in (None, False)]
    if given:
        raise SystemExit(f"{' '.join(given)}: these need LFW photos embedded by both models, not galleries")
    settings |= {"pairing": "identity", "fewshot": False, "security": False}


# -- the pipeline: each step returns what the next needs -------------------------------------
def select(cfg: TrainConfig) -> list[str]:
    """The LFW image names of this run (from the precomputed file when one is given)."""
    if cfg.embeddings:
        with np.load(cfg.embeddings) as data:
            all_names = sorted(str(n) for n in data["names"])
    else:
        images = lfw_images_dir()
        all_names = sorted(p.name for p in images.glob("*.jpg"))
        if not all_names:
            raise SystemExit(
                f"no LFW images in {images}: set FACE_ZOO_DIR "
                "(docs/guides/triton.md says where each file comes from) or pass --embeddings"
            )
    return choose_images(all_names, None if cfg.full else cfg.images, cfg.seed)


def embed(
    cfg: TrainConfig,
    names: list[str],
    log: Log,
    paths: list[Path] | None = None,
    landmarks: np.ndarray | None = None,
    mirror: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({model: (n, d) float32}, indices of the images any model failed on) for ``names``
    (LFW images unless ``paths`` are given; their faces mirrored with ``mirror``)."""
    if cfg.embeddings:
        with np.load(cfg.embeddings) as data:
            index = {str(n): i for i, n in enumerate(data["names"])}
            missing = [n for n in names if n not in index]
            if missing:
                raise SystemExit(
                    f"{cfg.embeddings}: no embeddings for {len(missing)} images, e.g. {missing[0]}"
                )
            rows = [index[n] for n in names]
            return {m: data[m][rows].astype(np.float32) for m in cfg.models}, np.zeros(0, np.int64)
    if not paths:
        images = lfw_images_dir()  # looked up once: it checks the file system
        paths = [images / n for n in names]
    out, failed = {}, set()
    with face_embedder(cfg.backend, triton_url=cfg.triton_url, models=cfg.models, log=log) as embedder:
        cache = EmbeddingCache(cfg.cache)
        for m in cfg.models:
            out[m], bad = embed_images(
                embedder, paths, m, cache, progress=cfg.progress, landmarks=landmarks, mirror=mirror
            )
            failed |= set(bad)
    return out, np.array(sorted(failed), dtype=np.int64)


def split(
    cfg: TrainConfig, names: list[str], emb: dict[str, np.ndarray], failed: np.ndarray, log: Log
) -> Split:
    """Drop images without a face, then split identities into fitting and evaluation people
    (with --ijbc every LFW image fits: the evaluation is IJB-C's)."""
    keep = np.setdiff1d(np.arange(len(names)), failed)
    if failed.size:
        log(f"{failed.size} images had no face for some model; dropped: {[names[i] for i in failed[:5]]} ...")
    names = [names[i] for i in keep]
    ids = np.array([identity_of(n) for n in names])
    fit = np.ones(len(ids), bool) if cfg.ijbc else identity_split(np.array(names), cfg.fit_fraction, cfg.seed)
    return Split(names, ids, fit, {m: e[keep] for m, e in emb.items()}, cfg.pairing, cfg.seed)


def fit(
    cfg: TrainConfig, data: Split
) -> tuple[dict[tuple[str, str, str], EmbeddingMap], CanonicalSpace | None]:
    """({(A, B, kind): map}, the hub space if fitted), fitted on the fitting people only."""
    pairs = data.fitting_pairs
    return fit_maps(pairs, tuple(cfg.kinds), progress=cfg.progress, cohort=cohort_of(cfg, pairs))


def cohort_of(cfg: TrainConfig, pairs: Pairs) -> np.ndarray | None:
    """(len(pairs),) bool: the rows of S-norm's cohort, --cohort-fraction of the people,
    seeded (the same people for every set of rows of the same people)."""
    return cohort_rows(pairs.groups, cfg.cohort_fraction, cfg.seed)


def evaluate(cfg: TrainConfig, data: Split, maps: dict, out: Path, log: Log) -> Evaluation:
    """Cross-model verification on all pairs of the evaluation people (or on IJB-C)."""
    if cfg.ijbc:
        protocol = read_ijbc(cfg.ijbc)
        root = Path(cfg.ijbc_images or cfg.ijbc)
        landmarks = None
        if protocol.landmarks is not None:
            landmarks = detections_from_landmarks(protocol.landmarks, protocol.scores)
        image_names = [str(n) for n in protocol.images]
        emb_eval, no_face = embed(cfg, image_names, log, [root / n for n in image_names], landmarks)
        log(
            f"IJB-C: {len(image_names)} images, {no_face.size} without a face (they add nothing to templates)"
        )
        what = f"the IJB-C 1:1 protocol in {cfg.ijbc}"
    else:
        emb_eval = {m: e[~data.fit] for m, e in data.embeddings.items()}
        # All pairs of the evaluation images, written in the IJB-C layout and read back, so
        # LFW and IJB-C go through one code path.
        eval_names = np.array(data.names)[~data.fit]
        write_ijbc(
            out / "protocol", lfw_all_pairs(eval_names, max_impostors=cfg.max_impostors, seed=cfg.seed)
        )
        protocol = read_ijbc(out / "protocol")
        n_eval_ids = np.unique(data.ids).size - np.unique(data.ids[data.fit]).size
        what = f"all pairs of {(~data.fit).sum()} LFW images of {n_eval_ids} other people"
    log(
        f"fitted on {data.fit.sum()} images of {np.unique(data.ids[data.fit]).size} people; evaluating on "
        f"{what}: {protocol.labels.sum():,} genuine, {(~protocol.labels).sum():,} impostor pairs"
    )
    results = cross_model_eval(
        emb_eval,
        protocol,
        maps,
        kinds=eval_kinds(cfg.kinds),
        convention=cfg.convention,
        progress=cfg.progress,
        both_ways=data.fitting_pairs.shared_rows,
    )
    return Evaluation(results, protocol, emb_eval, what)


def eval_kinds(kinds: list[str]) -> tuple[str, ...]:
    """What is evaluated: no map, each kind under a plain cosine, and tuned maps as Compare
    scores them."""
    return ("none", *kinds, *([Scored.compare("tuned")] if "tuned" in kinds else []))


def studies(cfg: TrainConfig, data: Split, ev: Evaluation, maps: dict, out: Path) -> tuple[list, dict]:
    """The few-shot curve and the template-security table: (report sections, JSON)."""
    sections: list[tuple[str, str]] = []
    extra: dict[str, Any] = {}
    if cfg.fewshot:
        kinds = tuple(k for k in eval_kinds(cfg.kinds) if k not in ("none", "hub"))
        study = FewShot(kinds, tuple(cfg.fewshot_methods), cfg.fewshot_draw, cfg.seed, cfg.progress)
        curve = study.run(
            data.pairs, ev.embeddings, ev.protocol, mirrored=data.mirrored_pairs, full_maps=maps
        )
        fewshot_plot(curve, out / "fewshot.png")
        sections.append(("How little data is enough", fewshot_table(curve, "fewshot.png")))
        extra["fewshot"] = curve
    if cfg.pairing_study:
        study = pairing_study(
            data.fitting,
            data.ids[data.fit],
            ev.embeddings,
            ev.protocol,
            seed=cfg.seed,
            convention=cfg.convention,
            progress=cfg.progress,
        )
        pairing_plot(study, out / "pairing.png")
        sections.append(("Image pairs or identity pairs", pairing_table(study, "pairing.png")))
        extra["pairing_study"] = study
    if cfg.ablation is not None:
        study = ablation(
            data.fitting_pairs,
            ev.embeddings,
            ev.protocol,
            maps if "tuned" in cfg.kinds else None,
            methods=cfg.ablation,
            convention=cfg.convention,
            progress=cfg.progress,
        )
        sections.append(
            (
                "Ablation: what each method adds at low FAR",
                "Mean over ordered pairs of TAR (strict) with one side mapped; worst gap = the largest "
                "shortfall of a pair against its target's native TAR. Rows with a scoring are scored as "
                "Compare does; the others by a plain cosine of the mapped template (Translate).\n\n"
                + ablation_table(study),
            )
        )
        extra["ablation"] = study
    if cfg.joining and len(cfg.models) >= 3:
        newcomer = cfg.models[-1] if cfg.joining == "last" else cfg.joining
        if newcomer not in cfg.models:
            raise SystemExit(f"--joining {newcomer}: not among --models {cfg.models}")
        study = vendor_joins(
            data.fitting,
            data.ids[data.fit],
            ev.embeddings,
            ev.protocol,
            newcomer,
            convention=cfg.convention,
        )
        sections.append(("A new vendor joins the hub", vendor_table(study)))
        extra["vendor_joins"] = study
    if cfg.security and "linear" in cfg.kinds and not cfg.ijbc:
        sec = template_security(ev.embeddings, data.ids[~data.fit], maps)
        sections.append(("Template security: a leaked template, translated", security_table(sec)))
        extra["security"] = sec
    return sections, extra


def calibrate_maps(
    pairs: Pairs, maps: dict, cohort: np.ndarray | None
) -> tuple[dict[tuple[str, str, str], Calibration], dict[tuple[str, str, str], Calibration]]:
    """({(A, B, kind): Compare's thresholds}, {(A, B, kind): its thresholds scored both ways
    with the B -> A map, for the kinds scored so, when both maps share their pairs}) from
    out-of-fold scores of the fitting pairs, ``cohort`` their rows set aside as S-norm's
    (hub legs are served through the hub space, which makes no decisions)."""
    one_way, two_way = {}, {}
    for (a, b, kind), m in maps.items():
        if kind == "hub":
            continue
        one_way[a, b, kind] = calibrate(m, *pairs.xy(a, b), pairs.groups, cohort=cohort)
        reverse = reverse_of(maps, a, b, kind) if pairs.shared_rows else None
        if reverse is not None:
            two_way[a, b, kind] = calibrate(m, *pairs.xy(a, b), pairs.groups, cohort=cohort, reverse=reverse)
    return one_way, two_way


def map_files(
    maps: dict,
    hub: CanonicalSpace | None,
    calibrations: dict[tuple[str, str, str], Calibration],
    provenance: dict[str, Any],
    two_way: dict[tuple[str, str, str], Calibration] | None = None,
) -> dict[str, bytes]:
    """{file name: map-file bytes}, each direct map with its calibration (and its two-way
    thresholds, naming the reverse map's fingerprint); serialised once, then written and
    published as is."""
    files = {}
    for (a, b, kind), m in maps.items():
        if (a, b, kind) not in calibrations:
            continue
        calibration = calibrations[a, b, kind]
        record = {
            **provenance,
            calibration.PROVENANCE_KEY: calibration.to_dict(),
            "calibration_method": f"out-of-fold scores, {CALIBRATION_FOLDS} identity-disjoint folds "
            f"of the fitting people; each FAR the upper {CONFIDENCE:.0%} confidence bound (Clopper-Pearson) "
            "of those scores' false accepts",
        }
        if two_way and (a, b, kind) in two_way:
            record[twoway.KEY] = {
                "reverse_id": map_id_of(maps[b, a, kind]),
                "reverse": mapfile.fingerprint(maps[b, a, kind]),
                "thresholds": two_way[a, b, kind].to_dict(),
            }
        files[f"{a}__{b}.{kind}.safetensors"] = mapfile.dumps(m, record)
    if hub is not None:
        files["hub.safetensors"] = mapfile.dumps(hub, provenance)
    return files


def far_section(check: dict) -> str:
    return (
        'Compare decides "same" when its score reaches the map\'s threshold for the requested FAR. '
        "Thresholds are calibrated on out-of-fold scores of the fitting people (each fold's map never "
        "saw the people it scores); here they are applied to all pairs of the evaluation people, "
        "whom no map saw. Ratio = measured FAR / promised FAR (1 is exact). `<kind>:translate`: "
        "Translate's output under a plain cosine at the target model's own thresholds (set on "
        "the fitting people), what a vendor's matcher does with a migrated gallery; `native`: "
        f"the target's own templates at those thresholds.{_ways(check)}\n\n" + far_table(check)
    )


def _ways(check: dict) -> str:
    """How the far check scored tuned maps: both ways where their pairs allowed it."""
    if any(use.endswith(":one-way") for use in check):
        return (
            " Tuned maps are scored both ways, with the reverse map, at their two-way thresholds (what "
            "Compare does when both are served); `<kind>:one-way` is the same maps scored one way at "
            "their one-way thresholds."
        )
    if "tuned" in check:
        return (
            " Tuned maps are scored one way: identity pairs made from one set of photos fit the reverse "
            "map on other photos than a migration has, so both ways would flatter them."
        )
    return ""


def write(out: Path, files: dict[str, bytes]) -> None:
    (out / "maps").mkdir(exist_ok=True)
    for name, blob in files.items():
        mapfile.write(out / "maps" / name, blob)


def publish(cfg: TrainConfig, blobs: list[bytes], log: Log) -> list[str]:
    """Publish map files into the store and/or the running service: the command line, not
    the library, decides where maps go."""
    published = []
    if cfg.store:
        from mapper.serving.stores import open_store

        store = open_store(cfg.store)
        for blob in blobs:
            ref = store.publish(blob).ref
            published.append(f"{ref.map_id} v{ref.version}")
    if cfg.publish:
        from mapper_service.client import MapperClient

        with MapperClient(cfg.publish, admin_token=cfg.token()) as client:
            for blob in blobs:
                ref = client.put_mapping(blob).ref
                published.append(f"{ref.map_id} v{ref.version} -> {cfg.publish}")
    log(f"published {len(published)} maps")
    return published


def print_summary(res: CrossModelResults) -> None:
    papers = ", ".join(f"{kind} {tar}" for kind, tar in PAPERS.items())
    print(f"\nMean TAR ({res.convention}); papers (IJB-C, 10 CNNs) at 1e-2: {papers}")
    print(f"{'':<10}" + "".join(f"{'FAR=' + format(f, 'g'):>12}" for f in SUMMARY_FARS))
    for kind, values in res.summary().items():
        print(f"{kind:<10}" + "".join(f"{values[f]:>12.4f}" for f in SUMMARY_FARS))


def redacted(argv: list[str]) -> str:
    """The command line as reports show it: secrets replaced."""
    shown, hide = [], False
    for arg in argv:
        if hide:
            shown.append("***")
        elif arg.startswith("--admin-token="):
            shown.append("--admin-token=***")
        else:
            shown.append(arg)
        hide = arg == "--admin-token"
    return " ".join(shown)


@dataclass
class Run:
    """What the steps of each input (LFW photos, or two galleries) hand to the common end
    of a run: calibration, the FAR check, map files, publishing and the report."""

    pairs: Pairs  # the fitting pairs, which thresholds are calibrated on
    maps: dict[tuple[str, str, str], EmbeddingMap]
    hub: CanonicalSpace | None
    results: CrossModelResults
    provenance: dict[str, Any]  # what the maps were fitted on, for their files
    description: str  # the report's first sentence
    sections: list[tuple[str, str]]
    extra: dict[str, Any]
    #: calibrations -> promised against measured FAR on the evaluation people (None: no check)
    far_check: Callable[[dict], dict] | None


def from_lfw(cfg: TrainConfig, out: Path, log: Log) -> Run:
    """Embed LFW photos (or read their embeddings), split people, fit, evaluate, study."""
    names = select(cfg)
    log(f"{len(names)} LFW images of {len({identity_of(n) for n in names})} people; models: {cfg.models}")
    data = split(cfg, names, *embed(cfg, names, log), log)
    if cfg.mirror:
        fit_names = [n for n, f in zip(data.names, data.fit, strict=True) if f]
        data.mirrored, failed = embed(cfg, fit_names, log, mirror=True)
        if failed.size:  # the same detections as the originals: this does not happen
            raise SystemExit(f"{failed.size} mirrored faces failed to embed, e.g. {fit_names[failed[0]]}")
    maps, hub = fit(cfg, data)
    ev = evaluate(cfg, data, maps, out, log)
    sections, extra = studies(cfg, data, ev, maps, out)
    check = None
    if not cfg.ijbc:  # the FARs the thresholds promise, measured on the evaluation people
        fit_ids = data.ids[data.fit]
        native = {b: native_thresholds(data.fitting[b], fit_ids) for b in cfg.models}
        check = partial(far_check, maps, native=native, emb=ev.embeddings, ids=data.ids[~data.fit])

    n_people = int(np.unique(data.ids[data.fit]).size)
    description = (
        f"Maps fitted on {data.fit.sum()} LFW images of {n_people} people"
        + (" and their mirrored faces" if cfg.mirror else "")
        + f", as {data.pairs.describe()}, and evaluated on {ev.what} (seed {cfg.seed})."
    )
    provenance = {
        "dataset": f"LFW ({len(data.names)} images)",
        "fit_images": int(data.fit.sum()),
        "fit_identities": n_people,
        "mirrored_views": cfg.mirror,
    }
    return Run(data.pairs, maps, hub, ev.results, provenance, description, sections, extra, check)


def from_galleries(cfg: TrainConfig, log: Log) -> Run:
    """Fit from two galleries of different photos: --old-gallery (models[0]'s templates)
    and --new-gallery (models[1]'s re-enrolments). The people in both are split; the
    fitting people's templates make identity pairs, and every template of the others
    (people in one gallery only are impostors) is evaluated across the galleries."""
    read = {
        "person_column": cfg.person_column,
        "id_column": cfg.id_column,
        "embedding_column": cfg.embedding_column,
    }
    galleries = {}
    for model, path in zip(cfg.models, (cfg.old_gallery, cfg.new_gallery), strict=True):
        try:
            g = read_gallery(path, **read)
        except InvalidInput as e:
            hint = "; name them with --person-column, --id-column, --embedding-column"
            raise SystemExit(f"{e}{hint if 'columns' in str(e) else ''}") from e
        known = registry.load().get(model)
        if known is not None and known.dim != g.dim:
            raise SystemExit(f"{path}: {g.dim}-d templates, but {model} makes {known.dim}-d ones")
        if g.rejected:
            log(f"{path}: rows left out: {g.rejected}")
        log(f"{path}: {len(g.persons):,} {g.dim}-d templates, {np.unique(g.persons).size:,} people ({model})")
        galleries[model] = g
    old, new = (galleries[m] for m in cfg.models)
    common = np.intersect1d(old.persons, new.persons)
    n_fit = round(cfg.fit_fraction * common.size)
    if min(n_fit, common.size - n_fit) < CALIBRATION_FOLDS:
        raise SystemExit(
            f"{common.size} people are in both galleries: too few to fit on some and evaluate on others"
        )
    fit_people = np.random.default_rng(cfg.seed).choice(common, n_fit, replace=False)
    pairs = gallery_pairs(*((m, g.embeddings, g.persons) for m, g in galleries.items()), fit_people)
    maps, hub = fit_maps(pairs, tuple(cfg.kinds), progress=cfg.progress, cohort=cohort_of(cfg, pairs))
    fitting = {m: np.isin(g.persons, fit_people) for m, g in galleries.items()}
    evaluation = {m: (g.embeddings[~fitting[m]], g.persons[~fitting[m]]) for m, g in galleries.items()}
    results = gallery_eval(
        evaluation,
        maps,
        eval_kinds(cfg.kinds),
        convention=cfg.convention,
        max_impostors=cfg.max_impostors,
        seed=cfg.seed,
    )
    native = {
        m: native_thresholds(
            g.embeddings[fitting[m]], g.persons[fitting[m]], max_impostors=cfg.max_impostors, seed=cfg.seed
        )
        for m, g in galleries.items()
    }
    n_eval = common.size - n_fit
    description = (
        f"Maps fitted on {pairs.describe()}, between the galleries {old.path} ({cfg.models[0]}) and "
        f"{new.path} ({cfg.models[1]}), and evaluated on every cross-gallery pair of the other people "
        f"({n_eval} people in both galleries, and those in one only as impostors): "
        f"{results.n_genuine:,} genuine, {results.n_impostor:,} impostor pairs (seed {cfg.seed})."
    )
    provenance = {
        "dataset": f"galleries ({len(old.persons)} and {len(new.persons)} templates)",
        "fit_identities": int(n_fit),
    }
    return Run(
        pairs,
        maps,
        hub,
        results,
        provenance,
        description,
        [],
        {},
        partial(
            gallery_far_check,
            maps,
            native=native,
            galleries=evaluation,
            max_impostors=cfg.max_impostors,
            seed=cfg.seed,
        ),
    )


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(argv)
    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    run = from_galleries(cfg, log) if cfg.old_gallery else from_lfw(cfg, out, log)
    provenance = {
        **run.provenance,
        "pairing": cfg.pairing,
        "fit_pairs": len(run.pairs),
        "cohort_fraction": cfg.cohort_fraction,
        "seed": cfg.seed,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": {"mapper": __version__, "python": platform.python_version(), "numpy": np.__version__},
    }
    calibrations, two_way = calibrate_maps(run.pairs, run.maps, cohort_of(cfg, run.pairs))
    sections, extra = run.sections, run.extra
    if run.far_check is not None:
        check = run.far_check(calibrations, two_way=two_way)
        sections.append(("Decisions at the promised FAR, on people never seen", far_section(check)))
        extra["far_check"] = check
    files = map_files(run.maps, run.hub, calibrations, provenance, two_way)
    write(out, files)
    published = publish(cfg, list(files.values()), log) if cfg.store or cfg.publish else []

    extra |= {
        "config": cfg.public(),
        "provenance": provenance,
        "published": published,
        "run_seconds": round(time.perf_counter() - t0, 1),
    }
    command = redacted(sys.argv[1:] if argv is None else argv)
    description = (
        f"{run.description} Row A's side is embedded by A and mapped into B's space; column B's side is "
        f"embedded by B. Run: `mapper-train {command}`."
    )
    report = write_report(
        out,
        run.results,
        title="Cross-model face verification",
        description=description,
        extra_sections=sections,
        extra_json=extra,
    )
    (out / "config.json").write_text(json.dumps(extra["config"], indent=1, default=str))
    print_summary(run.results)
    log(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
