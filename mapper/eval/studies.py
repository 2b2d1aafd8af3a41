"""Studies beside the main table: how few fitting pairs suffice (few-shot curve), what each
method adds at low FAR (ablation), what a leaked template reveals once translated (template
security), and a new vendor joining a hub."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from mapper.core.hub import CanonicalSpace
from mapper.core.maps import EmbeddingMap
from mapper.core.validation import l2_normalize
from mapper.errors import InvalidInput
from mapper.eval.crossmodel import Scored, cross_model_eval, fit_maps
from mapper.eval.metrics import evaluate
from mapper.eval.pairing import PAIRINGS, Pairs, make_pairs
from mapper.eval.protocols import VerificationProtocol
from mapper.eval.report import short
from mapper.eval.selection import DEFAULT_RECIPES, attach_scoring, cohort_rows, direct

#: How the few-shot curve samples its fitting pairs (see :func:`fewshot`).
FEWSHOT_DRAWS = ("images", "people")


@dataclass(frozen=True)
class FewShot:
    """The few-shot curve: mean cross-model TAR@FAR=1e-2 against the number of fitting
    pairs, per kind in ``kinds`` (``K:compare``: kind K scored as its map records) and per
    ablation method in ``methods`` (keys of :data:`ABLATION`).

    ``draw="images"``: each point fits on that many of the fitting pairs drawn at random
    (as a user would take a sample of their photos); ``"people"``: on every pair of that
    many people with 2+ pairs each (fewer people, more pairs each: the curve is lower, since
    what a map needs most is many faces). The last point uses every pair. ``seed`` seeds
    the draws and the impostor sample: each point is evaluated on every genuine pair and at
    most 1,000,000 impostor pairs of the protocol (plenty for FAR 1e-2), so the curve costs
    a few seconds per point at any scale.
    """

    kinds: tuple[str, ...] = ("linear", "rotation")
    methods: tuple[str, ...] = ()
    draw: str = "images"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.draw not in FEWSHOT_DRAWS:
            raise InvalidInput(f"draw must be one of {FEWSHOT_DRAWS}, got {self.draw!r}")
        _check_methods(self.methods)

    def run(
        self,
        pairs: Pairs,
        emb_eval: dict[str, np.ndarray],
        protocol: VerificationProtocol,
        *,
        mirrored: Pairs | None = None,
        full_maps: dict[tuple[str, str, str], Any] | None = None,
    ) -> dict[str, Any]:
        """The curve of ``pairs`` evaluated on ``emb_eval`` ({model: (n, d)}) under
        ``protocol``. ``mirrored``: the mirrored faces' pairs, row for row with ``pairs``:
        each drawn pair brings its mirrored pair too (the counts stay pairs). ``full_maps``:
        maps already fitted on every pair (fitting is deterministic), used for the last point."""
        kinds = self.kinds
        methods = tuple(m for m in self.methods if m not in kinds)  # "linear" is both
        rng = np.random.default_rng(self.seed)
        protocol = _at_most_impostors(protocol, 1_000_000, rng)  # first: the seeded draws of earlier runs
        draws = _fewshot_draws(pairs.groups, self.draw, rng)
        curve: dict[str, Any] = {
            "far": 1e-2,
            "draw": self.draw,
            "identities": [],
            "pairs": [],
            "tar": {kind: [] for kind in (*kinds, *methods)},
        }
        fit_kinds = tuple(dict.fromkeys(Scored(k).map_kind for k in kinds))
        native = cross_model_eval(emb_eval, protocol, {}, kinds=("none",), fars=(1e-2,), progress=False)
        curve["native"] = float(np.nanmean(np.diag(native.tar["none"][1e-2])))
        for chosen in tqdm(draws, desc="few-shot", disable=not self.progress):
            drawn = pairs.take(chosen)
            if mirrored is not None:
                drawn = drawn.concat(mirrored.take(chosen))
            if chosen.all() and full_maps is not None:
                maps = dict(full_maps)
            else:
                maps, _ = fit_maps(drawn, fit_kinds, progress=False, cohort=cohort_rows(drawn.groups))
            fitted, scored = _fit_methods(methods, drawn)
            res = cross_model_eval(
                emb_eval,
                protocol,
                {**maps, **fitted},
                kinds=(*kinds, *scored),
                fars=(1e-2,),
                progress=False,
                both_ways=drawn.shared_rows,
            )
            curve["identities"].append(int(np.unique(pairs.groups[chosen]).size))
            curve["pairs"].append(int(chosen.sum()))
            for key, kind in (*zip(kinds, kinds, strict=True), *zip(methods, scored, strict=True)):
                curve["tar"][key].append(res.summary()[kind][1e-2])
        return curve


#: FARs of the pairing study's curve.
PAIRING_FARS = (1e-2, 1e-3, 1e-4)


def pairing_study(
    emb_fit: dict[str, np.ndarray],
    ids_fit: np.ndarray,
    emb_eval: dict[str, np.ndarray],
    protocol: VerificationProtocol,
    *,
    kind: str = "linear",
    seed: int = 0,
    convention: str = "strict",
    progress: bool = True,
) -> dict[str, Any]:
    """Mean cross-model TAR at :data:`PAIRING_FARS` against the number of fitting pairs, for
    image pairs (one photo by both models) and identity pairs (two photos of a person),
    ``kind`` maps fitted on the same number of each, drawn at random from the fitting
    photos ({model: (n, d)}, ids (n,)); evaluated on the protocol's pairs (impostors capped
    at 1,000,000: at least 100 per threshold at 1e-4). ``tar``: the maps' output under a
    cosine (Translate); ``compare``: Compare by the ``llr`` scoring fitted on the same
    pairs. How many re-enrolled people a migration needs before a refit pays is read off
    the identity curves."""
    rng = np.random.default_rng(seed)
    protocol = _at_most_impostors(protocol, 1_000_000, rng)
    full = {p: make_pairs(p, emb_fit, ids_fit, seed=seed) for p in PAIRINGS}
    most = min(len(pairs) for pairs in full.values())
    counts = [n for n in (100, 250, 500, 1000, 2000, 4000) if n < most] + [most]
    out: dict[str, Any] = {
        "kind": kind,
        "fars": [f"{f:g}" for f in PAIRING_FARS],
        "pairs": counts,
        "people": [],
    }
    native = cross_model_eval(emb_eval, protocol, {}, kinds=("none",), fars=PAIRING_FARS, progress=False)
    out["native"] = {f"{f:g}": float(np.nanmean(np.diag(native.tar["none"][f]))) for f in PAIRING_FARS}
    for use in ("tar", "compare"):
        out[use] = {p: {f"{f:g}": [] for f in PAIRING_FARS} for p in PAIRINGS}
    jobs = [(p, n) for p in PAIRINGS for n in counts]
    for pairing, n in tqdm(jobs, desc="pairing study", disable=not progress):
        drawn = full[pairing].take(np.sort(rng.choice(len(full[pairing]), n, replace=False)))
        if pairing == "identity":  # the re-enrolled people these pairs need
            out["people"].append(int(np.unique(drawn.groups).size))
        maps, _ = fit_maps(drawn, (kind,), progress=False)
        for (a, b, _), m in maps.items():
            attach_scoring(m, "llr", *drawn.xy(a, b), drawn.groups)
        kinds = (kind, Scored.compare(kind))
        res = cross_model_eval(
            emb_eval, protocol, maps, kinds=kinds, fars=PAIRING_FARS, convention=convention, progress=False
        )
        for use, scored in zip(("tar", "compare"), kinds, strict=True):
            for f in PAIRING_FARS:
                out[use][pairing][f"{f:g}"].append(res.summary()[scored][f])
    return out


def pairing_table(study: dict[str, Any], plot: str) -> str:
    """The pairing study as a report section: what was drawn, the plot, two tables."""
    fars = study["fars"]
    native = ", ".join(f"{study['native'][f]:.4f} at {f}" for f in fars)
    head = [
        "| pairs (re-enrolled people) | " + " | ".join(f"image @{f} | identity @{f}" for f in fars) + " |",
        "|---|" + "---|" * (2 * len(fars)),
    ]
    lines = [
        f"Mean cross-model TAR (one side mapped by a `{study['kind']}` map) against the number of fitting "
        "pairs: image pairs join both models' templates of one photo; identity pairs join A's template of "
        "one photo with B's of another photo of the same person, as after a vendor switch when the old "
        f"model cannot run again; in brackets, how many people (re-enrolled, in a migration) the identity "
        f"pairs come from. Native (B vs B): {native}.",
        "",
        f"![pairing study]({plot})",
    ]
    for use, title in (("tar", "The maps' output under a cosine (Translate)"), ("compare", "Compare by llr")):
        lines += ["", f"{title}:", "", *head]
        for k, n in enumerate(study["pairs"]):
            cells = " | ".join(
                f"{study[use]['image'][f][k]:.4f} | {study[use]['identity'][f][k]:.4f}" for f in fars
            )
            lines.append(f"| {n} ({study['people'][k]}) | {cells} |")
    return "\n".join(lines)


def _fewshot_draws(ids_fit: np.ndarray, draw: str, rng: np.random.Generator) -> list[np.ndarray]:
    """(n_fit,) masks of the fitting images each point of the curve fits on, the last all."""
    unique, counts = np.unique(ids_fit, return_counts=True)
    multi = unique[counts >= 2]
    masks = []
    if draw == "images":
        for n in (n for n in (25, 50, 100, 250, 500, 1000, 2000) if n < ids_fit.size):
            mask = np.zeros(ids_fit.size, bool)
            mask[rng.choice(ids_fit.size, n, replace=False)] = True
            masks.append(mask)
    else:
        for n in (n for n in (5, 10, 25, 50, 100, 150, 250, 500) if n < multi.size):
            masks.append(np.isin(ids_fit, rng.choice(multi, n, replace=False)))
    return [*masks, np.ones(ids_fit.size, bool)]


def _at_most_impostors(
    protocol: VerificationProtocol, limit: int, rng: np.random.Generator
) -> VerificationProtocol:
    """Every genuine pair and a seeded sample of ``limit`` impostor pairs."""
    impostors = np.flatnonzero(~protocol.labels)
    if impostors.size <= limit:
        return protocol
    keep = np.sort(np.r_[np.flatnonzero(protocol.labels), rng.choice(impostors, limit, replace=False)])
    return replace(protocol, pairs=protocol.pairs[keep], labels=protocol.labels[keep])


def _recipe(make: Callable[[str, str], EmbeddingMap], rescale: bool, scoring: str | None) -> Callable:
    """A map fitter for the ablation: ``make`` fitted, optionally rescaled and scored."""

    def fit(a: str, b: str, X: np.ndarray, Y: np.ndarray, groups: np.ndarray) -> EmbeddingMap:
        m = make(a, b).fit(X, Y, groups=groups)
        if rescale:
            m.rescale_residual(X, Y)
        return attach_scoring(m, scoring, X, Y, groups) if scoring else m

    return fit


#: The ablation's methods: key -> fitter. Each adds one thing to the papers' maps
#: ("+rescale": residual rescaling; "/centred", "/snorm": the score Compare computes); the
#: study adds mapper-train's ``tuned`` maps as two more rows.
_RECIPES = {r.name: r.make for r in DEFAULT_RECIPES}
ABLATION: dict[str, Callable] = {
    f"{name}{suffix}": _recipe(_RECIPES[recipe], suffix == "+rescale", suffix[1:] if "/" in suffix else None)
    for name, recipe in (
        ("linear", "linear"),
        ("rotation", "rotation"),
        ("kernel", "kernel-d3-a3"),
        ("ensemble", "ensemble"),
    )
    for suffix in ("", "+rescale", "/centred", "/snorm")
} | {"mlp": _recipe(direct("mlp"), False, None)}


def _check_methods(methods: Sequence[str] | None) -> None:
    unknown = set(methods or ()) - set(ABLATION)
    if unknown:
        raise InvalidInput(f"unknown ablation methods {sorted(unknown)}; known: {list(ABLATION)}")


def _fit_methods(
    methods: Sequence[str], pairs: Pairs
) -> tuple[dict[tuple[str, str, str], EmbeddingMap], list[str]]:
    """Every ablation method fitted for every ordered pair ({(a, b, method): map}), and the
    kind each is evaluated as (``name:compare`` when it records a scoring)."""
    models = pairs.models
    maps, kinds = {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in methods:
            for a in models:
                for b in models:
                    if a != b:
                        maps[a, b, name] = ABLATION[name](a, b, *pairs.xy(a, b), pairs.groups)
            scored = maps[models[0], models[1], name].scoring_ is not None
            kinds.append(Scored.compare(name) if scored else name)
    return maps, kinds


def ablation(
    pairs: Pairs,
    emb_eval: dict[str, np.ndarray],
    protocol: VerificationProtocol,
    tuned: dict[tuple[str, str, str], EmbeddingMap] | None = None,
    *,
    methods: list[str] | None = None,
    fars: tuple[float, ...] = (1e-2, 1e-3, 1e-4),
    convention: str = "strict",
    progress: bool = True,
) -> dict[str, Any]:
    """Every method of ``methods`` (keys of :data:`ABLATION`, default all) fitted on the fitting ``pairs`` for
    every ordered pair and evaluated on the protocol; ``tuned`` maps (mapper-train's, with
    their selection time) add two rows: their output under a plain cosine (Translate) and
    scored as they record (Compare). Per method: mean TAR at ``fars`` over ordered pairs, the
    worst pair's gap to its target's native TAR at each FAR, and mean fitting seconds per map.
    """
    _check_methods(methods)
    chosen = list(methods or ABLATION)
    models = pairs.models
    ordered = [(a, b) for a in models for b in models if a != b]
    maps: dict[tuple[str, str, str], EmbeddingMap] = {}
    seconds: dict[str, float] = {}
    kinds: list[str] = []
    for name in tqdm(chosen, desc="ablation: fitting", disable=not progress):
        t0 = time.perf_counter()
        fitted, scored = _fit_methods([name], pairs)
        maps |= fitted
        kinds += scored
        seconds[name] = (time.perf_counter() - t0) / len(ordered)
    if tuned:
        t = float(np.mean([tuned[a, b, "tuned"].fit_info_["selection"]["seconds"] for a, b in ordered]))
        for a, b in ordered:
            maps[a, b, "tuned"] = tuned[a, b, "tuned"]
        kinds += ["tuned", Scored.compare("tuned")]
        seconds["tuned"] = t
    res = cross_model_eval(
        emb_eval,
        protocol,
        maps,
        kinds=tuple(kinds),
        fars=fars,
        convention=convention,
        progress=progress,
        both_ways=pairs.shared_rows,
    )
    off = ~np.eye(len(models), dtype=bool)
    native = {f: np.diag(res.tar[kinds[0]][f]) for f in fars}
    rows: dict[str, Any] = {"native (B vs B)": {"tar": {f"{f:g}": float(native[f].mean()) for f in fars}}}
    for kind in kinds:
        gap = {f: native[f][None, :] - res.tar[kind][f] for f in fars}
        label = {"tuned": "tuned, Translate (cosine)", Scored.compare("tuned"): "tuned, Compare"}
        rows[label.get(kind, Scored(kind).map_kind)] = {
            "tar": {f"{f:g}": float(res.tar[kind][f][off].mean()) for f in fars},
            "worst_gap": {f"{f:g}": float(gap[f][off].max()) for f in fars},
            "fit_seconds_per_map": seconds[Scored(kind).map_kind],
        }
    return {"fars": [f"{f:g}" for f in fars], "models": models, "rows": rows}


def fewshot_table(curve: dict[str, Any], plot: str) -> str:
    """The few-shot curve as a report section's text: how it was drawn, the plot, a table."""
    columns = list(curve["tar"])
    rows = "\n".join(
        f"| {i} | {p} | " + " | ".join(f"{curve['tar'][k][n]:.4f}" for k in columns) + " |"
        for n, (i, p) in enumerate(zip(curve["identities"], curve["pairs"], strict=True))
    )
    sample = (
        "sample of the fitting images"
        if curve["draw"] == "images"
        else "sample of the fitting people with 2+ images (all their images)"
    )
    return (
        f"Mean cross-model TAR@FAR=1e-2 (strict) over all ordered pairs, maps fitted on a seeded {sample}; "
        f"native mean {curve['native']:.4f}.\n\n![few-shot curve]({plot})\n\n"
        "| identities | pairs | "
        + " | ".join(columns)
        + " |\n|---|---|"
        + "---|" * len(columns)
        + "\n"
        + rows
    )


def ablation_table(study: dict[str, Any]) -> str:
    """Markdown: each method's mean TAR, worst gap to native, and fitting time."""
    fars = study["fars"]
    lines = [
        "| method | "
        + " | ".join(f"TAR@{f}" for f in fars)
        + " | "
        + " | ".join(f"worst gap @{f}" for f in fars)
        + " | fit s/map |",
        "|---|" + "---|" * (2 * len(fars) + 1),
    ]
    for name, row in study["rows"].items():
        gaps = row.get("worst_gap")
        cells = " | ".join(f"{row['tar'][f]:.4f}" for f in fars)
        gap_cells = " | ".join(f"{gaps[f]:.4f}" if gaps else "-" for f in fars)
        t = row.get("fit_seconds_per_map")
        lines.append(f"| {name} | {cells} | {gap_cells} | {f'{t:.2f}' if t is not None else '-'} |")
    return "\n".join(lines)


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


def vendor_joins(
    emb_fit: dict[str, np.ndarray],
    ids_fit: np.ndarray,
    emb_eval: dict[str, np.ndarray],
    protocol: VerificationProtocol,
    newcomer: str,
    *,
    fars: tuple[float, ...] = (1e-2, 1e-3),
    convention: str = "strict",
) -> dict[str, Any]:
    """A new vendor's model joins a hub of the others with one fit of its own legs (every
    existing leg unchanged), against refitting the whole hub on all models.

    TAR of every ordered pair between the newcomer and each other model, both ways, for the
    two hubs, on the evaluation protocol; and the pairs among the others (unchanged by
    joining, changed by a refit).
    """
    others = [m for m in emb_fit if m != newcomer]
    joined = CanonicalSpace(name="joined").fit({m: emb_fit[m] for m in others}, groups=ids_fit)
    joined.add_model(newcomer, emb_fit[newcomer], references={m: emb_fit[m] for m in others}, groups=ids_fit)
    refit = CanonicalSpace(name="refit").fit(emb_fit, groups=ids_fit)
    pairs = [(a, b) for a in emb_fit for b in emb_fit if a != b]
    out: dict[str, Any] = {"newcomer": newcomer, "fars": list(fars), "pairs": {}}
    for label, hub in (("joined", joined), ("refit", refit)):
        maps = {(a, b, "hub"): hub.mapping(a, b) for a, b in pairs}
        res = cross_model_eval(
            emb_eval, protocol, maps, kinds=("hub",), fars=fars, convention=convention, progress=False
        )
        models = res.models
        for a, b in pairs:
            row = out["pairs"].setdefault(f"{a} -> {b}", {})
            row[label] = {f"{f:g}": float(res.tar["hub"][f][models.index(a), models.index(b)]) for f in fars}
    return out


def vendor_table(study: dict[str, Any]) -> str:
    """Markdown: the newcomer's pairs, joined vs refit, and the mean over the other pairs."""
    new, fars = study["newcomer"], [f"{f:g}" for f in study["fars"]]
    head = " | ".join(f"joined @{f} | refit @{f}" for f in fars)
    lines = [
        f"**{short(new)}** joins a hub of the other models with one fit of its own legs (every other leg "
        "unchanged), against refitting the whole hub on all of them. TAR (strict):",
        "",
        f"| pair | {head} |",
        "|---|" + "---|" * (2 * len(fars)),
    ]
    rest = {label: {f: [] for f in fars} for label in ("joined", "refit")}
    for pair, row in study["pairs"].items():
        a, b = pair.split(" -> ")
        if new in (a, b):
            cells = " | ".join(f"{row['joined'][f]:.4f} | {row['refit'][f]:.4f}" for f in fars)
            lines.append(f"| {short(a)} -> {short(b)} | {cells} |")
        else:
            for label in rest:
                for f in fars:
                    rest[label][f].append(row[label][f])
    cells = " | ".join(f"{np.mean(rest['joined'][f]):.4f} | {np.mean(rest['refit'][f]):.4f}" for f in fars)
    lines.append(f"| mean of the other {len(rest['joined'][fars[0]])} pairs | {cells} |")
    return "\n".join(lines)
