"""The evaluation report: Markdown, PNG figures and a machine-readable results file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mapper.classifiers import registry as classifiers
from mapper.eval.crossmodel import CURVE_FARS, CrossModelResults
from mapper.faces import registry

#: The papers' IJB-C 1:1 figures (McNeely-White et al.): mean TAR at FAR 1e-2 over 10 CNNs.
PAPERS = {"native": 0.96, "linear": 0.95, "rotation": 0.91}
CONVENTION_TEXT = {
    "strict": "TAR at the lowest threshold whose FAR does not exceed the target",
    "ijbc": "TPR at the sklearn ROC point whose FPR is nearest the target, as the IJB-C scripts",
}


def short(name: str) -> str:
    """The model's label in tables and plots (the registry's ``short``)."""
    model = registry.load().get(name) or classifiers.BY_NAME.get(name)
    return model.label if model else name


def heatmaps(
    models: list[str], matrices: dict[str, np.ndarray], path: Path, *, label: str, title: str, vmin: float = 0
) -> None:
    """One annotated K x K heat map per kind (row A mapped into column B); panels grow with
    K and wrap two to a row beyond six models, so ten models stay legible."""
    k = len(models)
    side = max(3.6, (0.55 if k > 6 else 0.36) * k + 1)
    cols = len(matrices) if k <= 6 else min(2, len(matrices))
    rows = -(-len(matrices) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1, (side + 0.4) * rows), squeeze=False)
    labels = [short(m) for m in models]
    middle = (vmin + 1) / 2
    for n, (ax, (kind, m)) in enumerate(zip(axes.flat, matrices.items(), strict=False)):
        im = ax.imshow(m, vmin=vmin, vmax=1, cmap="viridis")
        ax.set_title(kind)
        ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), labels if n % cols == 0 else [], fontsize=8)
        ax.set_xlabel("B (native side)")
        if n % cols == 0:
            ax.set_ylabel("A (mapped into B)")
        for (r, c), v in np.ndenumerate(m):
            color = "white" if v < middle else "black"
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8 if k <= 6 else 7, color=color)
    for ax in list(axes.flat)[len(matrices) :]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def roc_grid(res: CrossModelResults, path: Path) -> None:
    """ROC curves: every ordered pair in a K x K grid up to five models; beyond, one panel
    per target model B (native B, and per kind the median over sources A with its range)."""
    if len(res.models) > 5:
        roc_by_target(res, path)
        return
    k = len(res.models)
    fig, axes = plt.subplots(k, k, figsize=(3.2 * k, 2.8 * k), sharex=True, sharey=True, squeeze=False)
    for a, A in enumerate(res.models):
        for b, B in enumerate(res.models):
            ax = axes[a][b]
            ax.plot(CURVE_FARS, res.curves[B, B, "native"], "k-", lw=1.5, label="native (B vs B)")
            if a != b:
                for kind in res.kinds:
                    ax.plot(CURVE_FARS, res.curves[A, B, kind], lw=1, label=kind)
            ax.set_xscale("log")
            ax.set_ylim(0, 1.01)
            ax.grid(alpha=0.3)
            ax.set_title(f"{short(A)} → {short(B)}" if a != b else f"{short(A)} native", fontsize=9)
            if a == k - 1:
                ax.set_xlabel("FAR")
            if b == 0:
                ax.set_ylabel("TAR")
    handles, labels = axes[0][1 if k > 1 else 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def roc_by_target(res: CrossModelResults, path: Path) -> None:
    k = len(res.models)
    cols = 5
    rows = -(-k // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols, 3.0 * rows), sharex=True, sharey=True, squeeze=False
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, B in zip(axes.flat, res.models, strict=False):
        ax.plot(CURVE_FARS, res.curves[B, B, "native"], "k-", lw=1.5, label="native (B vs B)")
        for n, kind in enumerate(res.kinds):
            curves = np.array([res.curves[A, B, kind] for A in res.models if A != B])
            color = colors[n % len(colors)]
            ax.plot(
                CURVE_FARS, np.median(curves, axis=0), lw=1.2, color=color, label=f"{kind} (median over A)"
            )
            ax.fill_between(CURVE_FARS, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.15)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        ax.set_title(f"into {short(B)}", fontsize=9)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("FAR")
    for ax in axes[:, 0]:
        ax.set_ylabel("TAR")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.99), ncol=len(labels), frameon=False
    )
    fig.suptitle("Each panel: templates of every other model A mapped into B; band = range over A", y=1.08)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def fewshot_plot(curve: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for kind, points in curve["tar"].items():
        ax.plot(curve["pairs"], points, "o-", label=kind)
    ax.axhline(curve["native"], color="k", ls="--", lw=1, label="native (mean)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(
        curve["pairs"],
        [f"{p}\n({i} ppl)" for p, i in zip(curve["pairs"], curve["identities"], strict=True)],
        fontsize=7,
    )
    ax.set_xlabel("fitting pairs, and the people they show")
    ax.set_ylabel(f"mean TAR @ FAR {curve['far']:g}")
    ax.set_title("How little data is enough")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _far_panels(
    fars: list[Any], draw: Callable[[Any, Any], None], ylabel: str, title: str, path: Path
) -> None:
    """One panel per FAR, ``draw(ax, far)`` filling each; the first keeps the legend."""
    fig, axes = plt.subplots(1, len(fars), figsize=(4.2 * len(fars), 3.6), squeeze=False)
    for ax, far in zip(axes[0], fars, strict=True):
        draw(ax, far)
        ax.set_title(f"FAR {far}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def pairing_plot(study: dict[str, Any], path: Path) -> None:
    """Mean TAR against fitting pairs, image and identity pairs, the maps' output under a
    cosine and Compare by llr, native."""

    def draw(ax: Any, far: str) -> None:
        for (use, how), colour in ((("tar", "cosine"), "C0"), (("compare", "Compare, llr"), "C1")):
            for pairing, style in (("image", "o-"), ("identity", "s--")):
                label = f"{pairing} pairs, {how}"
                ax.plot(study["pairs"], study[use][pairing][far], style, color=colour, label=label)
        ax.axhline(study["native"][far], color="k", ls=":", lw=1, label="native (B vs B)")
        ax.set_xscale("log")
        ax.set_xlabel("fitting pairs")

    title = "Image pairs against identity pairs (two photos of a person)"
    _far_panels(study["fars"], draw, f"mean TAR, {study['kind']} maps", title, path)


def people_plot(runs: list[dict[str, Any]], kind: str, path: Path) -> None:
    """``kind``'s mean TAR from image and identity pairs against the re-enrolled people (2+
    photos) fitted on, and native. ``runs`` as ``tools.pairing_gap`` makes them:
    ``reenrolled`` and ``summary[pairing][kind][far]`` per run."""
    people = [run["reenrolled"] for run in runs]

    def draw(ax: Any, far: float) -> None:
        for pairing, style in (("image", "o-"), ("identity", "s--")):
            tar = [run["summary"][pairing][kind][far] for run in runs]
            ax.plot(people, tar, style, label=f"{pairing} pairs, as many")
        native = [run["summary"]["image"]["native"][far] for run in runs]
        ax.plot(people, native, "k:", label="native (B vs B)")
        ax.set_xlabel("re-enrolled people fitted on")

    fars = sorted(runs[0]["summary"]["image"][kind], reverse=True)
    title = "How many re-enrolled people identity pairs need"
    _far_panels(fars, draw, f"mean TAR, {kind}", title, path)


def summary_table(res: CrossModelResults) -> str:
    summary = res.summary()
    fars = res.fars
    head = "| | " + " | ".join(f"TAR@FAR={f:g}" for f in fars) + " | papers, IJB-C, TAR@FAR=1e-2 |"
    lines = [head, "|---" * (len(fars) + 2) + "|"]
    for kind, values in summary.items():
        paper = PAPERS.get(kind)
        lines.append(f"| {kind} | " + " | ".join(f"{values[f]:.4f}" for f in fars) + f" | {paper or '-'} |")
    return "\n".join(lines)


def matrix_table(models: list[str], matrix: np.ndarray) -> str:
    names = [short(m) for m in models]
    lines = ["| A \\ B | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for a, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in matrix[a]) + " |")
    return "\n".join(lines)


def write_report(
    out: str | Path,
    res: CrossModelResults,
    *,
    title: str,
    description: str,
    extra_sections: list[tuple[str, str]] | None = None,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Write report.md, results.json and figures into ``out``; returns report.md's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for far in res.fars:
        heatmaps(
            res.models,
            {k: res.tar[k][far] for k in res.kinds},
            out / f"tar_far{far:g}.png",
            label=f"TAR @ FAR {far:g} ({res.convention})",
            title=f"Cross-model verification, TAR @ FAR {far:g}; diagonal = native",
        )
    roc_grid(res, out / "roc.png")
    parts = [
        f"# {title}",
        description,
        f"Pairs: {res.n_genuine:,} genuine, {res.n_impostor:,} impostor. Every TAR here uses the "
        f"**{res.convention}** convention ({CONVENTION_TEXT[res.convention]}).",
        "## Summary (mean native = diagonal; mean per map kind = off-diagonal)",
        summary_table(res),
    ]
    for far in res.fars:
        parts.append(f"## TAR @ FAR {far:g}\n\n![TAR matrices at FAR {far:g}](tar_far{far:g}.png)")
        for kind in res.kinds:
            parts.append(
                f"**{kind}** (row A mapped into column B's space; diagonal native)\n\n"
                + matrix_table(res.models, res.tar[kind][far])
            )
    parts.append("## ROC curves\n\n![ROC curves](roc.png)")
    for heading, body in extra_sections or []:
        parts.append(f"## {heading}\n\n{body}")
    path = out / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    (out / "results.json").write_text(json.dumps({**res.to_json(), **(extra_json or {})}, indent=1))
    return path
