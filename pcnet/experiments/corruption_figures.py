"""Chapter 5's figures (at most three panels a row, legible at the book's width). Nothing runs at import."""
from __future__ import annotations

import torch

from .optional import require
from . import corruption_report as R
from . import corruptions
from .plotting import COLORS, PALETTE

WIDTH = 7.5  # inches: the book's text width
CONTROL_STYLE = {"dynamics": (COLORS["pcnet"], "-"), "zero": (COLORS["zero"], "--"),
                 "shuffled": (PALETTE[1], "-."), "mean": (PALETTE[2], ":")}
SINGLE_PASS = {"rescale": COLORS["rescaled"], "BN adaptation": COLORS["backbone"], "TENT": "black"}


def plot_examples(image: torch.Tensor, *, seed: int = 0):
    """One clean image (1, H, W) in [0, 1] and its 19 corruptions x 5 severities, as one labelled mosaic."""
    plt = require("matplotlib.pyplot", purpose="corruption_figures.plot_examples")

    from .plotting import show_images

    x = image[None]  # (1, 1, H, W)
    rows = [x.expand(len(corruptions.ALL), *x.shape[1:])]  # clean row, (C, 1, H, W)
    for s in corruptions.SEVERITIES:
        rows.append(torch.cat([corruptions.corrupt(x, name=n, severity=s, seed=seed) for n in corruptions.ALL]))
    fig, ax = plt.subplots(figsize=(WIDTH, 3.6))
    show_images(torch.cat(rows), nrow=len(corruptions.ALL), ax=ax)
    h = image.shape[-1] + 2
    for j, name in enumerate(corruptions.ALL):
        ax.text((j + 0.5) * h, -2, name.replace("_", " "), rotation=60, ha="left", va="bottom", fontsize=9)
    for i, label in enumerate(["clean"] + [f"s = {s}" for s in corruptions.SEVERITIES]):
        ax.text(-2, (i + 0.5) * h, label, ha="right", va="center", fontsize=9)
    return fig


def plot_curves(study: dict, *, summary: str = "mCE", n_boot: int = 1000):
    """The summary (relative to the backbone) over timesteps, one panel per value set: the dynamics and their
    three feedback controls with pointwise BCa intervals; single-pass methods as horizontal lines."""
    plt = require("matplotlib.pyplot", purpose="corruption_figures.plot_curves")
    MaxNLocator = require("matplotlib.ticker", purpose="corruption_figures.plot_curves").MaxNLocator

    sets = list(study["value_sets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(WIDTH, 3.4), sharey=True, squeeze=False)
    for ax, v in zip(axes[0], sets):
        for m, (col, ls) in CONTROL_STYLE.items():
            est, low, high = R.curve(study, f"{v}: {m}", summary=summary, n_boot=n_boot)
            t = range(len(est))
            ax.plot(t, est, color=col, ls=ls, label=m)
            ax.fill_between(t, low, high, color=col, alpha=0.2)
        for m, col in SINGLE_PASS.items():
            name = f"{v}: {m}" if m == "rescale" else m
            ax.axhline(float(R.ratio_verdict(study, name, summary=summary, n_boot=2).estimate), color=col,
                       lw=1, ls=(0, (1, 2)) if m == "rescale" else "--", label=m)
        ax.axhline(1.0, color="black", lw=0.5)
        ax.set(xlabel="timestep t", title=f"{v} values")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].set_ylabel(f"{summary} relative to t = 0")
    axes[0, -1].legend(fontsize=9, loc="best")
    fig.tight_layout()
    return fig


def plot_per_corruption(study: dict):
    """CE_c / CE_c(backbone) of every method (last timestep) for every corruption, as one heatmap."""
    plt = require("matplotlib.pyplot", purpose="corruption_figures.plot_per_corruption")
    import numpy as np

    methods = study["methods"]
    ratios = torch.stack([R.cell_ratios(study, m)[:, -1] for m in methods], 1).numpy()  # (C, M)
    span = max(float(np.abs(ratios - 1).max()), 1e-3)
    fig, ax = plt.subplots(figsize=(WIDTH, 6.2))
    im = ax.imshow(ratios, cmap="RdBu_r", vmin=1 - span, vmax=1 + span, aspect="auto")
    ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(len(study["config"]["names"])), study["config"]["names"], fontsize=9)
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="CE_c relative to the backbone (below 1: fewer errors)")
    fig.tight_layout()
    return fig


def plot_tradeoff(summary_family: list, clean_family: list, *, summary: str = "mCE"):
    """Each method's summary (BCa interval) against its clean-accuracy change (Newcombe interval)."""
    plt = require("matplotlib.pyplot", purpose="corruption_figures.plot_tradeoff")

    fig, ax = plt.subplots(figsize=(WIDTH, 4.2))
    colors = {**{m: c for m, (c, _) in CONTROL_STYLE.items()}, **SINGLE_PASS}
    for v in clean_family:
        method = v.contrast.removeprefix("clean: ").removesuffix(" - backbone")
        r = R.find(summary_family, f"{summary}: {method}")
        value_set, _, kind = method.rpartition(": ")  # e.g. ("tuned", "zero"); ("", "TENT")
        ax.errorbar(v.estimate, r.estimate, xerr=[[v.estimate - v.low], [v.high - v.estimate]],
                    yerr=[[r.estimate - r.low], [r.high - r.estimate]], color=colors[kind], label=method, capsize=2,
                    fmt={"paper": "o", "tuned": "s"}.get(value_set, "^"), mfc="white" if value_set == "tuned" else None)
    ax.axhline(1.0, color="black", lw=0.5)
    ax.axvline(0.0, color="black", lw=0.5)
    ax.set(xlabel="clean accuracy change vs backbone (points)", ylabel=f"{summary} relative to the backbone")
    ax.legend(fontsize=9, ncol=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig
