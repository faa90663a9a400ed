"""One plot style for every figure in the book (seaborn-based), a palette and small helpers.

Call ``use_style()`` once after the imports of a chapter. Nothing is changed at import.
"""
from __future__ import annotations

from pcnet.experiments.optional import require

# Colour-blind safe palette (seaborn "colorblind", Wong 2011 ordering).
PALETTE = ("#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc",
           "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9")

# Fixed meanings used across chapters, so a colour means the same thing everywhere.
COLORS = {
    "feedforward": PALETTE[0],   # beta term / backbone drive
    "feedback": PALETTE[1],      # lam term / top-down prediction
    "memory": PALETTE[2],        # (1 - beta - lam) term
    "error": PALETTE[3],         # alpha term / reconstruction error
    "backbone": PALETTE[7],      # the unchanged feedforward network (t = 0)
    "pcnet": PALETTE[0],         # predictive-coding network with feedback
    "zero": PALETTE[4],          # zero-prediction control
    "rescaled": PALETTE[5],      # fixed-rescale feedforward control
}

# Figures are shown at their pixel size on the site (a content column of ~700-750 px): at figure.dpi = 100, a
# width of at most MAX_WIDTH inches keeps seaborn's "notebook" text (>= 11 pt) at >= ~10 pt on the page.
MAX_WIDTH = 7.5

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "figure.figsize": (6.4, 4.0),
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "image.cmap": "viridis",
}


def use_style() -> None:
    """Apply the book's plot style (seaborn whitegrid, colour-blind palette, fixed sizes)."""
    mpl = require("matplotlib", purpose="plotting.use_style")
    sns = require("seaborn", purpose="plotting.use_style")
    sns.set_theme(context="notebook", style="whitegrid", palette=list(PALETTE))
    mpl.rcParams.update(STYLE)


def color(name: str) -> str:
    """The fixed colour of a quantity (see ``COLORS``), e.g. ``color('feedback')``."""
    try:
        return COLORS[name]
    except KeyError:
        raise KeyError(f"unknown colour name {name!r}; choose one of {sorted(COLORS)}") from None


def layer_colors(n: int) -> list:
    """``n`` ordered colours for layers 1..n (light = low layer, dark = high layer)."""
    sns = require("seaborn", purpose="plotting.layer_colors")
    return list(sns.color_palette("crest", n_colors=n))


def show_images(images, *, nrow: int = 8, titles=None, ax=None, cmap=None):
    """Show a batch of images (B,C,H,W) or (B,H,W) in [0,1] as a grid of panels; returns the figure.

    ``titles``: one string per image (optional). ``ax``: an existing axis to draw one mosaic into."""
    plt = require("matplotlib.pyplot", purpose="plotting.show_images")
    import numpy as np
    import torch
    x = torch.as_tensor(images).detach().cpu().float()
    if x.ndim == 3:
        x = x.unsqueeze(1)  # (B,1,H,W)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B,C,H,W) with C in (1, 3) or (B,H,W); got {tuple(x.shape)}")
    b, c = x.shape[:2]
    if cmap is None:
        cmap = "gray" if c == 1 else None
    ncol = min(nrow, b)
    nrows = (b + ncol - 1) // ncol
    if ax is not None:
        h, w = x.shape[2:]
        mosaic = torch.ones(c, nrows * (h + 2), ncol * (w + 2))
        for i in range(b):
            r, q = divmod(i, ncol)
            mosaic[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = x[i]
        ax.imshow(np.squeeze(mosaic.clamp(0, 1).permute(1, 2, 0).numpy()), cmap=cmap, vmin=0, vmax=1)
        ax.set_axis_off()
        return ax.figure
    side = min(1.3, MAX_WIDTH / ncol)  # inches per panel: the figure fits the page (MAX_WIDTH)
    fig, axes = plt.subplots(nrows, ncol, figsize=(side * ncol, side * nrows + (0.45 * nrows if titles else 0)),
                             squeeze=False)
    for i, a in enumerate(axes.flat):
        a.set_axis_off()
        if i < b:
            a.imshow(np.squeeze(x[i].clamp(0, 1).permute(1, 2, 0).numpy()), cmap=cmap, vmin=0, vmax=1)
            if titles is not None:
                a.set_title(str(titles[i]), fontsize=10)
    fig.tight_layout()
    return fig


EFFECT_COLORS = {"gain": PALETTE[2], "cost": PALETTE[3], "none": PALETTE[7], "withheld": PALETTE[5]}  # a verdict's colour in forest plots


def forest_plot(verdicts, *, ax=None, labels=None, title: str | None = None):
    """A verdict family as a forest plot on one axis; returns the figure.

    Per contrast (top to bottom, in the family's order): the estimate and its 95 % interval, coloured by the
    (Holm-corrected) verdict (``EFFECT_COLORS``); a light band of +- the minimum detectable effect around the
    no-effect value (an effect inside it is one the design could miss); a vertical line at the no-effect value.
    ``labels``: one per verdict (default: the contrasts without their shared prefix, which becomes the title).
    All verdicts must share the no-effect value and unit (split a mixed family: :func:`family_plot` does)."""
    plt = require("matplotlib.pyplot", purpose="plotting.forest_plot")

    from . import verdicts as V

    verdicts = list(verdicts)
    if not verdicts:
        raise ValueError("forest_plot: the family is empty; pass at least one Verdict")
    kinds = {(v.null, v.unit) for v in verdicts}
    if len(kinds) > 1:
        raise ValueError(f"forest_plot: the verdicts mix no-effect values and units {sorted(kinds)}; plot each on "
                         "its own axis (plotting.family_plot splits a family that way)")
    prefix, short = V.short_labels([v.contrast for v in verdicts])
    labels = short if labels is None else list(labels)
    if len(labels) != len(verdicts):
        raise ValueError(f"forest_plot: {len(labels)} labels for {len(verdicts)} verdicts; pass one label each")
    if ax is None:
        _, ax = plt.subplots(figsize=(MAX_WIDTH, max(2.0, 1.2 + 0.32 * len(verdicts))), layout="constrained")
    null, unit = verdicts[0].null, verdicts[0].unit
    ys = list(range(len(verdicts) - 1, -1, -1))  # first contrast at the top
    for k, (y, v) in enumerate(zip(ys, verdicts)):
        ax.plot([null - v.mde, null + v.mde], [y, y], color=PALETTE[7], alpha=0.25, lw=7, solid_capstyle="butt",
                label="± MDE (80 % power)" if k == 0 else None)
        ax.errorbar([v.estimate], [y], xerr=[[v.estimate - v.low], [v.high - v.estimate]], fmt="o", ms=5,
                    capsize=3, color=EFFECT_COLORS[v.effect])
    ax.axvline(null, color="black", lw=1, label=f"no effect ({null:g})")
    ax.set_yticks(ys, labels)
    ax.set_ylim(-0.7, len(verdicts) - 0.3)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel(f"estimate, 95 % interval ({unit})" if unit else "estimate, 95 % interval")
    ax.set_title(prefix if title is None else title, fontsize=11)
    for effect, c in EFFECT_COLORS.items():  # legend entries for the verdict colours present
        if any(v.effect == effect for v in verdicts):
            ax.plot([], [], "o", color=c, label={"none": "no detectable effect", "withheld": "no comparison"}.get(effect, effect))
    from matplotlib.transforms import ScaledTranslation
    below = ax.transAxes + ScaledTranslation(0, -0.5, ax.figure.dpi_scale_trans)  # 0.5 in under the axis: below the x label
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below, ncol=3, frameon=False)
    return ax.figure


def family_groups(verdicts) -> list[list]:
    """A family split by (no-effect value, unit), in order of first appearance (one forest-plot panel each)."""
    groups: dict = {}
    for v in verdicts:
        groups.setdefault((v.null, v.unit), []).append(v)
    return list(groups.values())


def family_plot(verdicts, *, title: str | None = None):
    """A verdict family's forest plot, one panel per no-effect value and unit (:func:`family_groups`); returns
    the figure. Show it alone in its cell (a figure caption then applies to it only), the table in the next
    (:func:`show_table`)."""
    plt = require("matplotlib.pyplot", purpose="plotting.family_plot")

    groups = family_groups(verdicts)
    if not groups:
        raise ValueError("family_plot: the family is empty; pass at least one Verdict")
    heights = [max(2.0, 1.2 + 0.32 * len(g)) for g in groups]  # room for the title, x label and legend
    fig, axes = plt.subplots(len(groups), 1, squeeze=False, layout="constrained", figsize=(MAX_WIDTH, sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    for ax, group in zip(axes[:, 0], groups):
        forest_plot(group, ax=ax)
    if title:
        import textwrap
        fig.suptitle(textwrap.fill(title, 80), fontsize=12)  # wrapped: never wider than the figure
    return fig


def show_table(verdicts, *, summary: str = "the table of this family") -> str:
    """Display a family's table (numbers formatted to what they carry) collapsed under ``summary`` (an HTML
    ``<details>`` block); returns the HTML."""
    from IPython.display import HTML, display

    from . import verdicts as V

    frame = V.table(verdicts)
    text = V.details_html(frame, summary=f"{summary} ({frame.attrs['title']})" if frame.attrs["title"] else summary)
    display(HTML(text))
    return text
