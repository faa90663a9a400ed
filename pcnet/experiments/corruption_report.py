"""Chapter 5's verdicts from a corruption study (:mod:`pcnet.experiments.corruption_study`).

Two summaries of the corruption error, both relative to the backbone (t = 0 of the same network):

* ``"mCE"`` (Hendrycks & Dietterich 2019, normalised by our own t = 0): mean over corruptions c of
  CE_c(method) / CE_c(t = 0), with CE_c the sum over severities of the error rate;
* ``"ratio of means"`` (Predify, Choksi et al. 2021): mean_c CE_c(method) / mean_c CE_c(t = 0).

Both depend on an image only through its number of wrong severities per corruption, so the paired image
bootstrap (BCa, :func:`pcnet.experiments.stats.bootstrap`) resamples images on those counts (C, n).
Families (Holm within each): one per summary over all methods and contrasts; per value set the 19 x 5
corruption x severity cells (dynamics at T vs t = 0, exact McNemar + Newcombe); the clean-accuracy costs.
Nothing runs at import.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .optional import require
from . import verdicts as V

BACKBONE = "paper: dynamics"  # its t = 0 is the plain backbone, shared by every method's reference


def errors(correct: torch.Tensor) -> torch.Tensor:
    """Wrong severities per image: bool correctness (T+1, C, S, n) -> float counts (T+1, C, n)."""
    return (~correct).double().sum(-2)


def mce_ratio(err: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Hendrycks & Dietterich's mCE normalised by ``ref``: mean_c sum_i err / sum_i ref; (..., C, n) -> (...)."""
    return (err.sum(-1) / ref.sum(-1)).mean(-1)


def ratio_of_means(err: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Predify's ratio of means mean_c CE_c / mean_c CE_c(ref); (..., C, n) -> (...)."""
    return err.sum((-2, -1)) / ref.sum((-2, -1))


SUMMARIES = {"mCE": mce_ratio, "ratio of means": ratio_of_means}


def _final(study: dict, method: str) -> torch.Tensor:
    return errors(study["correct"][method])[-1]  # (C, n) at the last timestep (or the single pass)


def _reference(study: dict) -> torch.Tensor:
    return errors(study["correct"][BACKBONE])[0]  # (C, n): the backbone


def ratio_verdict(study: dict, method: str, *, summary: str, n_boot: int = 2000, seed: int = 0) -> V.Verdict:
    """The method's corruption error relative to the backbone (null 1, lower is better)."""
    f = SUMMARIES[summary]
    return V.bootstrap_verdict(lambda e, r: f(e, r), _final(study, method), _reference(study), null=1.0,
                               higher_is_better=False, contrast=f"{summary}: {method}", n_boot=n_boot, seed=seed)


def difference_verdict(study: dict, a: str, b: str, *, summary: str, n_boot: int = 2000, seed: int = 0) -> V.Verdict:
    """Ratio of ``a`` minus ratio of ``b`` on the same images (null 0, below 0: ``a`` has the lower error)."""
    f = SUMMARIES[summary]
    return V.bootstrap_verdict(lambda e, g, r: f(e, r) - f(g, r), _final(study, a), _final(study, b),
                               _reference(study), higher_is_better=False, contrast=f"{summary}: {a} - {b}",
                               n_boot=n_boot, seed=seed)


def contrasts(study: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """The family's methods (each against the backbone) and its pairwise contrasts: the dynamics against each of
    their four controls and against both TTA baselines (per value set), and TENT against BN adaptation."""
    sets = list(study["value_sets"])
    methods = [m for m in study["methods"]]
    pairs = [(f"{v}: dynamics", f"{v}: {c}") for v in sets for c in ("zero", "shuffled", "mean", "rescale")]
    pairs += [(f"{v}: dynamics", t) for v in sets for t in ("BN adaptation", "TENT")]
    return methods, pairs + [("TENT", "BN adaptation")]


def summary_family(study: dict, *, summary: str, n_boot: int = 2000, seed: int = 0) -> list[V.Verdict]:
    """All ratios and contrasts of one summary ("mCE" or "ratio of means"), Holm-corrected as one family."""
    methods, pairs = contrasts(study)
    family = [ratio_verdict(study, m, summary=summary, n_boot=n_boot, seed=seed) for m in methods]
    first, second = (v.contrast.removeprefix(f"{summary}: ") for v in sorted(family, key=lambda v: v.estimate)[:2])
    if (first, second) not in pairs and (second, first) not in pairs:
        pairs = pairs + [(first, second)]  # "the best method" is decided by this test, never by the ranking
    family += [difference_verdict(study, a, b, summary=summary, n_boot=n_boot, seed=seed) for a, b in pairs]
    return V.holm_family(family)


def best_method(family: list[V.Verdict], *, summary: str, batch_orders: int = 1,
                over_orders: list[V.Verdict] = (), orders: int = 0) -> str:
    """One sentence on the lowest-error method, decided by its Holm-corrected contrast with the runner-up.

    Test-time adaptation depends on the order of its batches, and the image bootstrap does not see that variance:
    with fewer than 5 batch orders (``batch_orders``) no method is called "the best" -- a significant contrast then
    reads "ranks first on this batch order". ``over_orders``: verdicts measured over ``orders`` batch orders
    (:func:`pcnet.experiments.tta_orders.over_orders`, contrasts named as the family's); when one of them is the
    contrast of the two lowest point estimates it decides instead of the family's contrast (which stays on its
    ``batch_orders`` otherwise), its p Holm-corrected within the family in place of that contrast's."""
    ranked = sorted((v for v in family if " - " not in v.contrast), key=lambda v: v.estimate)
    first, second = (v.contrast.removeprefix(f"{summary}: ") for v in ranked[:2])
    for a, b in ((first, second), (second, first)):
        try:
            v = find(list(over_orders), f"{summary}: {a} - {b}")
        except KeyError:
            continue
        if any(x.contrast == v.contrast for x in family):  # Holm within the family, in place of the one-order contrast
            v = find(V.holm_family([replace(v, p_holm=None) if x.contrast == v.contrast else x for x in family]),
                     v.contrast)
        return _over_orders_sentence(v, first, second, a, summary=summary, orders=orders)
    for a, b in ((first, second), (second, first)):
        try:
            v = find(family, f"{summary}: {a} - {b}")
        except KeyError:
            continue
        if v.effect == "none":
            verdict = "is not distinguishable from the runner-up"
        elif batch_orders >= 5:
            verdict = f"is the best method (over {batch_orders} batch orders)"
        else:
            verdict = (f"ranks first on {'this batch order' if batch_orders == 1 else f'{batch_orders} batch orders'}"
                       " (batch-order variance, which the image bootstrap leaves out, is not measured: no best-method "
                       "claim)")
        return f"{summary}: the lowest point estimate, {first}, {verdict} ({v})"
    raise KeyError(f"no contrast between {first} and {second} in the family")


def _over_orders_sentence(v: V.Verdict, first: str, second: str, a: str, *, summary: str, orders: int) -> str:
    """The best-method sentence decided by ``v`` (contrast ``a`` minus the other of first and runner-up)."""
    lower = a if v.estimate < 0 else ({first, second} - {a}).pop()  # the lower error over the orders
    if v.effect == "none":
        verdict = f"is not distinguishable from the runner-up, {second}, over {orders} batch orders"
    elif orders < 5:
        verdict = (f"differs from the runner-up, {second}, over only {orders} batch orders (fewer than 5: no "
                   f"best-method claim; the lower error: {lower})")
    elif lower == first:
        verdict = f"is the best method (its contrast with the runner-up, {second}, over {orders} batch orders)"
    else:
        verdict = (f"is not the best: over {orders} batch orders the runner-up, {second}, has the lower error "
                   "(no best-method claim: its contrasts with the other methods rest on one batch order)")
    return f"{summary}: the lowest point estimate on batch order 0, {first}, {verdict} ({v})"


def findings(study: dict, families: dict, cells: dict, clean: list[V.Verdict], *, over_orders: dict | None = None,
             orders: int = 0) -> list[str]:
    """The chapter's verdict lines, each printed with n, MDE, test and Holm p (markdown bullet list).
    ``over_orders``: {summary: [verdicts over ``orders`` batch orders]} for :func:`best_method`."""
    lines = []
    for summary, fam in families.items():
        for v in study["value_sets"]:
            lines.append(str(find(fam, f"{summary}: {v}: dynamics")))
            lines += [str(find(fam, f"{summary}: {v}: dynamics - {v}: {c}")) for c in ("zero", "shuffled", "mean",
                                                                                       "rescale")]
        lines += [str(find(fam, f"{summary}: {m}")) for m in ("BN adaptation", "TENT")]
        lines += [best_method(fam, summary=summary, over_orders=(over_orders or {}).get(summary, ()), orders=orders)]
    for v, fam in cells.items():
        c = cell_summary(fam)
        lines.append(f"{v} dynamics at T vs t = 0 in each corruption x severity cell (n = {c['n']} images each, "
                     f"MDE {c['mde_min']:.2f} to {c['mde_max']:.2f} points, exact McNemar, Holm over {c['cells']}"
                     f" cells): {c['gain']} gains, {c['cost']} costs, {c['none']} without a detectable effect")
    lines += [str(v) for v in clean]
    return [f"- {line}" for line in lines]


def cell_family(study: dict, *, value_set: str) -> list[V.Verdict]:
    """Dynamics at T vs t = 0 in every corruption x severity cell (n images each; exact McNemar, Newcombe),
    Holm over all cells of the value set."""
    correct = study["correct"][f"{value_set}: dynamics"]  # (T+1, C, S, n)
    names, sev = study["config"]["names"], study["severities"]
    family = [V.paired_proportions(correct[-1, c, s], correct[0, c, s], contrast=f"{names[c]} s{sev[s]}")
              for c in range(len(names)) for s in range(len(sev))]
    return V.holm_family(family)


def clean_family(study: dict) -> list[V.Verdict]:
    """Clean accuracy of every method (last timestep) minus the backbone's, exact McNemar, Holm."""
    base = study["clean"][BACKBONE][0]  # (n,)
    family = [V.paired_proportions(c[-1], base, contrast=f"clean: {m} - backbone")
              for m, c in study["clean"].items()]
    return V.holm_family(family)


def curve(study: dict, method: str, *, summary: str, n_boot: int = 1000, seed: int = 0):
    """Per-timestep ratio (T+1,) of ``method`` to the backbone with pointwise BCa intervals: (estimate, low, high)."""
    from .stats import bootstrap

    f = SUMMARIES[summary]
    err = errors(study["correct"][method])  # (T+1, C, n)
    r = bootstrap(lambda e, g: f(e, g[..., None, :, :]), err, _reference(study), n_boot=n_boot, seed=seed)
    return r.estimate, r.low, r.high


def cell_ratios(study: dict, method: str) -> torch.Tensor:
    """CE_c(t) / CE_c(backbone) per corruption (C, T+1) (point estimates, for the per-corruption figure)."""
    err = errors(study["correct"][method]).sum(-1)  # (T+1, C)
    return (err / _reference(study).sum(-1)).T


def family_table(family: list[V.Verdict]):
    """A pandas table of a family (one row per verdict)."""
    pd = require("pandas", purpose="corruption_report.family_table")

    return pd.DataFrame([v.as_row() for v in family]).set_index("contrast")


def cell_summary(family: list[V.Verdict]) -> dict:
    """How many cells of a cell family show a gain, a cost or no detectable effect (after Holm), and the MDE range."""
    effects = [v.effect for v in family]
    mdes = [v.mde for v in family]
    return {"cells": len(family), "gain": effects.count("gain"), "cost": effects.count("cost"),
            "none": effects.count("none"), "n": family[0].n, "mde_min": min(mdes), "mde_max": max(mdes)}


def find(family: list[V.Verdict], contrast: str) -> V.Verdict:
    """The verdict of ``contrast`` in a family (KeyError names the available ones)."""
    for v in family:
        if v.contrast == contrast:
            return v
    raise KeyError(f"no contrast {contrast!r}; have {[v.contrast for v in family]}")
