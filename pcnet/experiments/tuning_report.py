"""What the tuning study (:mod:`pcnet.experiments.tuning_study`) says: where the optimum lies, the test-set
verdicts of the tuned dynamics against the fair baselines, which methods are dominated, and the two figures.

Verdicts are paired (exact McNemar, Newcombe interval, MDE) on per-image correctness of the same test images.
Nothing runs at import.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import dynamics_study as study
from .verdicts import Verdict, holm_family, paired_proportions

NAMES = ("tuned dynamics", "backbone", "rescale", "BN adaptation", "TENT")  # the test-set methods, in order
AXES = ("clean", "noisy")
_MIRROR = {"gain": "cost", "cost": "gain", "none": "none"}


def _values(p: dict) -> str:
    return f"β = {p['beta']:g}, λ = {p['lam']:g}, α = {p['alpha']:g}"


# --------------------------------------------------------------------------- the validation grid
def _key(p: dict) -> tuple:
    return tuple(float(p[k]) for k in ("beta", "lam", "alpha"))


def ranked(result: dict) -> list[dict]:
    """The grid rows, best first (ties keep grid order, as :func:`dynamics_study.best_point` does)."""
    return sorted(result["grid"]["rows"], key=lambda r: -r["score"])


def gap(best: dict, other: dict, n: int) -> tuple[float, float]:
    """(best − other in points, its paired SE) on the same validation images, from the per-image outcomes."""
    if other.get("T") is None:
        return 100 * (best["score"] - other["score"]), 0.0
    d = study.unpack(best["T"], n).double() - study.unpack(other["T"], n).double()  # (n,)
    return 100 * float(d.mean()), 100 * float(d.std()) / math.sqrt(n)


def optimum(result: dict) -> dict:
    """Where the optimum lies: the point, its (selection-biased) score, the edges, the constraint, the runner-up."""
    cfg, grid, rows = result["config"], result["grid"], ranked(result)
    best, n = rows[0], result["config"]["n_val"]
    gaps = [gap(best, r, n) for r in rows[1:]]
    close = sum(1 for g, se in gaps if g <= 2 * se)
    earlier = next((r for r in rows if _key(r) == _key(result["earlier"])), None)
    return {"best": best, "runner_up": rows[1] if len(rows) > 1 else None, "gap": gaps[0] if gaps else None,
            "within_2se": close, "n_points": len(rows), "n_val": n, "edges": grid["edges"],
            "stopped": grid["stopped"], "axes": grid["axes"], "constraint": abs(best["beta"] + best["lam"] - 1) < 1e-9,
            "limits": {k: cfg[f"{k}_limits"] for k in ("beta", "lam", "alpha")},
            "earlier": earlier, "earlier_gap": None if earlier is None else gap(best, earlier, n),
            "agrees": _key(best) == _key(result["earlier"])}


def optimum_lines(result: dict) -> list[str]:
    o = optimum(result)
    b = o["best"]
    where = []
    for k, edge in o["edges"].items():
        if edge is None:
            where.append(f"{k} interior")
        else:
            lo, hi = o["limits"][k]
            limit = lo if edge == "low" else hi
            where.append(f"{k} on the {edge} edge of its grid ({b[k]:g}; the declared limit is {limit:g})")
    lines = [f"Validation optimum ({o['n_val']:,} images, Gaussian σ = {result['config']['sigma']:g}, accuracy at "
             f"t = T over {o['n_points']} grid points): {_values(b)}, {100 * b['score']:.2f} % (selection-biased: "
             f"these images chose it). Widening stopped: {o['stopped']}; " + "; ".join(where) + ".",
             ("The optimum lies on the constraint β + λ = 1 (memory weight 1 − β − λ = 0), a boundary of the "
              "parameter space, not of the grid." if o["constraint"] else
              f"The optimum is off the constraint β + λ = 1 (memory weight {1 - b['beta'] - b['lam']:.1f}).")]
    if o["runner_up"] is not None:
        g, se = o["gap"]
        lines.append(f"Runner-up {_values(o['runner_up'])}: {g:.2f} points below the best (paired SE {se:.2f}); "
                     f"{o['within_2se']} of the other {o['n_points'] - 1} points lie within 2 SE of the best.")
    e = result["earlier"]
    if o["agrees"]:
        lines.append(f"The earlier 500-image selection ({_values(e)}), which chapters 5 and 6 use, is the same point.")
    elif o["earlier"] is not None:
        g, se = o["earlier_gap"]
        lines.append(f"The earlier 500-image selection ({_values(e)}), which chapters 5 and 6 use, differs from it: "
                     f"on these validation images it scores {100 * o['earlier']['score']:.2f} %, {g:.2f} points "
                     f"below the new optimum (paired SE {se:.2f}).")
    else:
        lines.append(f"The earlier 500-image selection ({_values(e)}), which chapters 5 and 6 use, differs from it "
                     "and is not on this grid.")
    return lines


# --------------------------------------------------------------------------- the test set
def outcomes(result: dict) -> dict[str, dict[str, torch.Tensor]]:
    """{method: {"clean"/"noisy": (n,) bool}} on the test images, methods in :data:`NAMES` order."""
    n, test = result["config"]["n_test"], result["test"]
    pick = {"tuned dynamics": ("dynamics", "T"), "backbone": ("dynamics", "t0"), "rescale": ("rescale", "T"),
            "BN adaptation": ("BN adaptation", "T"), "TENT": ("TENT", "T")}
    return {name: {axis: study.unpack(test[axis][m][f], n) for axis in AXES} for name, (m, f) in pick.items()}


def accuracies(result: dict) -> dict[str, dict[str, tuple[float, float, float]]]:
    """{method: {axis: (accuracy, low, high)}} in %, Wilson 95 % intervals."""
    from .stats import proportion_interval

    return {m: {a: tuple(100 * float(v) for v in proportion_interval(c)) for a, c in per.items()}
            for m, per in outcomes(result).items()}


def _label(axis: str, result: dict) -> str:
    return "clean" if axis == "clean" else f"Gaussian σ = {result['config']['sigma']:g}"


def family(result: dict) -> list[Verdict]:
    """The tuned dynamics (t = T) − each other method, clean and noisy test images: one Holm family."""
    o = outcomes(result)
    return holm_family([paired_proportions(o["tuned dynamics"][a], o[m][a],
                                           contrast=f"test set: tuned dynamics − {m}, {_label(a, result)}")
                        for a in AXES for m in NAMES[1:]])


def pairwise(result: dict) -> list[Verdict]:
    """Every pair of methods (first − second, :data:`NAMES` order) on both axes: one Holm family (for dominance)."""
    o = outcomes(result)
    return holm_family([paired_proportions(o[a_][x], o[b_][x], contrast=f"{a_} − {b_}, {x}")
                        for i, a_ in enumerate(NAMES) for b_ in NAMES[i + 1:] for x in AXES])


def dominance(compare: dict[tuple[str, str], Sequence[str]]) -> dict[str, list[str]]:
    """{method: [the methods that dominate it]} from compare[(a, b)] = the effect of a − b on each axis ('gain',
    'cost' or 'none'; one ordering per pair is enough). a dominates b when a − b is no cost on every axis and a gain
    on at least one."""
    effects: dict[tuple[str, str], tuple[str, ...]] = {}
    for (a, b), eff in compare.items():
        effects[(a, b)] = tuple(eff)
        effects[(b, a)] = tuple(_MIRROR[e] for e in eff)
    methods = list(dict.fromkeys(m for pair in effects for m in pair))
    return {b: [a for a in methods if a != b and (a, b) in effects
                and "cost" not in effects[(a, b)] and "gain" in effects[(a, b)]] for b in methods}


def dominance_by_verdicts(result: dict) -> dict[str, list[str]]:
    """Dominance where 'better' means a significant gain in the Holm-corrected :func:`pairwise` family."""
    verdicts = iter(pairwise(result))
    return dominance({(a, b): [next(verdicts).effect for _ in AXES]
                      for i, a in enumerate(NAMES) for b in NAMES[i + 1:]})


def dominance_by_points(result: dict) -> dict[str, list[str]]:
    """Dominance by point estimates alone (any difference counts), for comparison."""
    acc = accuracies(result)

    def eff(a, b, x):
        return "gain" if acc[a][x][0] > acc[b][x][0] else "cost" if acc[a][x][0] < acc[b][x][0] else "none"

    return dominance({(a, b): [eff(a, b, x) for x in AXES] for i, a in enumerate(NAMES) for b in NAMES[i + 1:]})


def dominance_lines(result: dict) -> list[str]:
    out = []
    for how, dom in (("by the paired verdicts (all pairs, one Holm family)", dominance_by_verdicts(result)),
                     ("by point estimates alone", dominance_by_points(result))):
        said = "; ".join(f"{m} by {', '.join(d)}" for m, d in dom.items() if d) or "none"
        out.append(f"Dominated {how}: {said}.")
    return out


def summary_lines(result: dict) -> list[str]:
    """What the test-set family says, in words: per baseline and axis, better / worse / no detectable difference;
    then whether the tuned dynamics are dominated (by the paired verdicts)."""
    fam, out = family(result), []
    for m in NAMES[1:]:
        said = []
        for v in fam:
            if v.contrast.startswith(f"test set: tuned dynamics − {m},"):
                axis = v.contrast.rsplit(", ", 1)[1]
                how = {"gain": "better", "cost": "worse"}.get(v.effect)
                none = f"no detectable difference after Holm ({v._interval()} points, MDE {v.mde:.2f})"
                said.append(f"{axis}: " + (f"{how}, {v._interval()} points" if how else none))
        out.append(f"Tuned dynamics against {m} on the test set — " + "; ".join(said) + ".")
    dom = dominance_by_verdicts(result)["tuned dynamics"]
    out.append("The tuned dynamics are dominated (no worse on either axis and better on one, by the paired "
               f"verdicts) by {', '.join(dom)}." if dom else
               "No method dominates the tuned dynamics by the paired verdicts (none is significantly better on one "
               "axis without being significantly worse on the other).")
    return out


def findings(result: dict) -> list[str]:
    """Every line the chapter prints, generated from the result."""
    acc = accuracies(result)
    table = "; ".join(f"{m} {acc[m]['clean'][0]:.2f} / {acc[m]['noisy'][0]:.2f}" for m in NAMES)
    n = result["config"]["n_test"]
    return (optimum_lines(result)
            + [f"Test set ({n:,} images, clean / Gaussian σ = {result['config']['sigma']:g} accuracy in %): {table}."]
            + [str(v) for v in family(result)] + dominance_lines(result))


# --------------------------------------------------------------------------- figures
def plot_tradeoff(result: dict, ax) -> None:
    """Clean against noisy test accuracy of every method, Wilson 95 % error bars; methods dominated by the
    paired verdicts drawn hollow and labelled."""
    from .plotting import PALETTE, color

    acc, dominated = accuracies(result), dominance_by_verdicts(result)
    colors = {"tuned dynamics": color("pcnet"), "backbone": color("backbone"), "rescale": color("rescaled"),
              "BN adaptation": PALETTE[1], "TENT": PALETTE[2]}
    markers = dict(zip(NAMES, "osDv^"))  # distinct shapes: close points (BN adaptation, TENT) stay visible
    for m in NAMES:
        (cx, cl, ch), (ny, nl, nh) = acc[m]["clean"], acc[m]["noisy"]
        hollow = bool(dominated[m])
        ax.errorbar(cx, ny, xerr=[[cx - cl], [ch - cx]], yerr=[[ny - nl], [nh - ny]], fmt=markers[m], ms=8, capsize=3,
                    color=colors[m], mfc="white" if hollow else colors[m],
                    label=m + (f" (dominated by {', '.join(dominated[m])})" if hollow else ""))
    ax.set_xlabel("clean test accuracy (%)")
    ax.set_ylabel(f"noisy test accuracy (%), σ = {result['config']['sigma']:g}")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1)


def plot_grid(result: dict, ax) -> None:
    """Noisy validation accuracy at t = T over (beta, lam) at the chosen alpha; the chosen point outlined."""
    import numpy as np
    from matplotlib.patches import Rectangle

    alpha, axes = result["tuned"]["alpha"], result["grid"]["axes"]
    betas, lams = axes["beta"], axes["lam"]
    grid = np.full((len(lams), len(betas)), np.nan)  # (lam, beta)
    for r in result["grid"]["rows"]:
        if r["alpha"] == alpha:
            grid[lams.index(r["lam"]), betas.index(r["beta"])] = 100 * r["score"]
    im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white")
    t = result["tuned"]
    ax.add_patch(Rectangle((betas.index(t["beta"]) - 0.5, lams.index(t["lam"]) - 0.5), 1, 1, fill=False, lw=2.5,
                           color="black"))
    ax.set_xticks(range(len(betas)), [f"{v:g}" for v in betas])
    ax.set_yticks(range(len(lams)), [f"{v:g}" for v in lams])
    ax.set_xlabel("β"); ax.set_ylabel("λ"); ax.set_title(f"α = {alpha:g} (blank: β + λ > 1)", fontsize=10)
    ax.figure.colorbar(im, ax=ax, label="noisy val. accuracy at t=T (%)")


def plot_val_tradeoff(result: dict, ax) -> None:
    """Clean against noisy validation accuracy (t = T) of every (beta, lam) at the chosen alpha; the chosen point
    marked. Selection-biased on the noisy axis (these images chose the point)."""
    from .plotting import color

    noisy = {_key(r): r["score"] for r in result["grid"]["rows"]}
    pts = [(100 * r["score"], 100 * noisy[_key(r)]) for r in result["clean_slice"] if not r["diverged"]]
    ax.scatter(*zip(*pts), s=18, color=color("backbone"), label="grid points (β, λ)")
    t = next(r for r in result["clean_slice"] if _key(r) == _key(result["tuned"]))
    ax.scatter([100 * t["score"]], [100 * noisy[_key(t)]], s=90, marker="*", color=color("pcnet"),
               label="chosen point", zorder=3)
    ax.set_xlabel("clean validation accuracy (%)")
    ax.set_ylabel("noisy validation accuracy (%)")
    ax.set_title(f"validation, α = {result['tuned']['alpha']:g}", fontsize=10)
    ax.legend(fontsize=8)
