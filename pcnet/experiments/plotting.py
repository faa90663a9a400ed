"""One plot style for every figure in the book (seaborn-based), a palette and small helpers.

Call ``use_style()`` once after the imports of a chapter. Nothing is changed at import.
"""
from __future__ import annotations

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
    import matplotlib as mpl
    import seaborn as sns
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
    import seaborn as sns
    return list(sns.color_palette("crest", n_colors=n))


def show_images(images, *, nrow: int = 8, titles=None, ax=None, cmap=None):
    """Show a batch of images (B,C,H,W) or (B,H,W) in [0,1] as a grid of panels; returns the figure.

    ``titles``: one string per image (optional). ``ax``: an existing axis to draw one mosaic into."""
    import matplotlib.pyplot as plt
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
