"""The book's verdicts: one contrast each, decided by its (Holm-corrected) test or interval, never by a point
estimate, and printed with n and the minimum detectable effect (MDE) of its paired design.

Built on :mod:`pcnet.experiments.stats`; accuracies are reported in points. Nothing runs at import.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from .optional import require
from .stats import _z_sum, bootstrap, format_interval, holm, mcnemar_exact, mde_paired, newcombe_interval, paired_counts


@dataclass(frozen=True)
class Verdict:
    """One contrast of a verdict family, decided by its (Holm-corrected) test, never by the point estimate.

    estimate/low/high/mde are in ``unit`` (points for accuracies); ``null`` is the no-effect value (0 for a
    difference, 1 for a ratio); ``higher_is_better`` says which side of the null is a gain.
    """
    contrast: str
    n: int
    estimate: float
    low: float
    high: float
    mde: float
    test: str
    p: float
    p_holm: float | None = None
    alpha: float = 0.05
    null: float = 0.0
    higher_is_better: bool = True
    unit: str = "points"
    digits: int = 2
    withheld: str = ""  # why no comparison may be stated (e.g. an attack that has not converged); then no test decides

    def __post_init__(self):
        """A p-value that is NaN or outside [0, 1] would read as an effect ("gain"), an infinite estimate prints
        as "+inf [+0.000, +nan]": both are refused here, where every verdict is made."""
        for name in ("p", "p_holm"):
            value = getattr(self, name)
            if value is None and name == "p_holm":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
                raise ValueError(f"verdict {self.contrast!r}: {name} must be a probability in [0, 1], got {value!r}; "
                                 f"a NaN p comes from a test on degenerate input (NaN or infinite scores, no images)")
        if not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in (self.estimate, self.low, self.high)):
            raise ValueError(f"verdict {self.contrast!r}: estimate and interval must be finite, got "
                             f"{self.estimate!r} [{self.low!r}, {self.high!r}]; check the scores for NaN or inf")

    @property
    def effect(self) -> str:
        """'gain', 'cost' or 'none', from the Holm-adjusted p (the raw p outside a family) at ``alpha``;
        'withheld' when the comparison may not be stated at all (:attr:`withheld` says why)."""
        if self.withheld:
            return "withheld"
        if (self.p if self.p_holm is None else self.p_holm) > self.alpha:
            return "none"
        return "gain" if (self.estimate > self.null) == self.higher_is_better else "cost"

    @property
    def phrase(self) -> str:
        if self.withheld:
            return f"no comparison: {self.withheld}"
        if self.effect != "none":
            return f"a {self.effect}"
        bound = self.high - self.null if self.higher_is_better else self.null - self.low
        if bound <= 0:  # the interval (uncorrected) lies on the cost side, yet the decision's test does not reject
            decision = "after Holm correction" if self.p_holm is not None else f"by the {self.test} test"
            return f"no detectable effect {decision}, though the uncorrected interval excludes any gain"
        below = f"any gain is below {bound:.{self.digits}f} {self.unit}".rstrip()
        if (self.low > self.null if self.higher_is_better else self.high < self.null):
            # the uncorrected interval lies on the gain side: not a plain "no effect" (the correction decided it)
            decision = "after Holm correction" if self.p_holm is not None else f"by the {self.test} test"
            return (f"no detectable effect {decision}, though the uncorrected interval excludes {self.null:g} on the "
                    f"gain side ({below})")
        return f"no detectable effect: {below}"

    def _interval(self, unit: str = "") -> str:
        return format_interval((self.estimate, self.low, self.high), digits=self.digits, signed=self.null == 0,
                               unit=unit)

    def as_row(self) -> dict:
        """A flat dict for a pandas table of a family."""
        return {"contrast": self.contrast, "n": self.n, "MDE": round(self.mde, self.digits),
                "estimate [interval]": self._interval(), "test": self.test, "p": self.p, "Holm p": self.p_holm,
                "verdict": self.phrase}

    def __str__(self) -> str:
        holm_p = "" if self.p_holm is None else f", Holm p = {self.p_holm:.3g}"
        return (f"{self.contrast}: {self._interval(self.unit)} (n = {self.n}, MDE {self.mde:.{self.digits}f}; "
                f"{self.test} p = {self.p:.3g}{holm_p}): {self.phrase}")


def paired_proportions(a, b, *, contrast: str, confidence: float = 0.95, alpha: float = 0.05, power: float = 0.8,
                       mid_p: bool = False) -> Verdict:
    """Verdict on accuracy(a) - accuracy(b) in points: exact McNemar test, Newcombe interval, and the MDE
    from n and the observed discordance rate. a, b: per-image correctness on the same images.

    With no discordant image the observed rate (0) would give an MDE of 0; the MDE then uses the one-sided
    95 % upper bound of the discordance rate instead, 1 - 0.05^(1/n) (about 3/n, the "rule of three")."""
    n11, n10, n01, n00 = paired_counts(a, b)
    n = n11 + n10 + n01 + n00
    est, low, high = (100 * float(v) for v in newcombe_interval(n11, n10, n01, n00, confidence=confidence))
    discordance = (n10 + n01) / n if n10 + n01 else 1 - 0.05 ** (1 / n)
    mde = 100 * mde_paired(n, discordance=discordance, alpha=alpha, power=power)
    test = "exact McNemar" + (" mid-p" if mid_p else "")
    return Verdict(contrast, n, est, low, high, mde, test, mcnemar_exact(n10, n01, mid_p=mid_p), alpha=alpha)


def bootstrap_verdict(statistic: Callable[..., torch.Tensor], *samples, contrast: str, null: float = 0.0,
                      higher_is_better: bool = True, scale: float = 1.0, unit: str = "", alpha: float = 0.05,
                      power: float = 0.8, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
                      digits: int = 3) -> Verdict:
    """Verdict on a scalar statistic by the paired BCa bootstrap (:func:`bootstrap`): p from the inverted
    interval at ``null``, MDE = (z_{1-alpha/2} + z_power) x bootstrap SE. ``scale`` multiplies the reported
    values (not ``null``'s role: pass null in the statistic's own units)."""
    r = bootstrap(statistic, *samples, n_boot=n_boot, confidence=confidence, seed=seed, null=null)
    if r.estimate.numel() != 1:
        raise ValueError(f"bootstrap_verdict needs a scalar statistic, got shape {tuple(r.estimate.shape)}")
    za, zb = _z_sum(alpha, power)
    return Verdict(contrast, torch.as_tensor(samples[0]).shape[-1], scale * float(r.estimate), scale * float(r.low),
                   scale * float(r.high), scale * (za + zb) * float(r.se), "BCa bootstrap", float(r.p), alpha=alpha,
                   null=scale * null, higher_is_better=higher_is_better, unit=unit, digits=digits)


def holm_family(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """The verdicts of one family with Holm-adjusted p-values filled in (decisions then use them)."""
    if not verdicts:
        raise ValueError("holm_family: the family is empty")
    alphas = {v.alpha for v in verdicts}
    if len(alphas) > 1:
        raise ValueError(f"holm_family: one alpha per family, got {sorted(alphas)}")
    tested = [v for v in verdicts if not v.withheld]  # a withheld comparison is not tested: it takes no share of alpha
    if not tested:
        return list(verdicts)
    adjusted = iter(holm([v.p for v in tested], alpha=alphas.pop())[0])
    return [v if v.withheld else replace(v, p_holm=float(next(adjusted))) for v in verdicts]


# ----------------------------------------------------------------------------- formatting for the page
def format_p(p: float | None) -> str:
    """A p-value to the digits it carries: '3.7e-08' below 0.001, else two significant digits ('0.012', '0.31',
    '1'); '' for None (no test)."""
    if p is None:
        return ""
    p = float(p)
    if p == 0:
        return "0"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.2g}"


def short_labels(contrasts: Sequence[str]) -> tuple[str, list[str]]:
    """(shared prefix, short labels): the part before a ": " that every contrast of a family starts with goes into
    the title, each label keeps the rest. One contrast (or no shared part) keeps its label whole."""
    contrasts = list(contrasts)
    if len(contrasts) < 2:
        return "", contrasts
    prefix = contrasts[0]
    for c in contrasts[1:]:
        while not c.startswith(prefix):
            prefix = prefix[:-1]
    cut = prefix.rfind(": ")
    if cut <= 0 or any(not c[cut + 2:].strip() for c in contrasts):
        return "", contrasts
    return prefix[:cut], [c[cut + 2:] for c in contrasts]


def short_verdict(v: Verdict) -> str:
    """The verdict in a few words for a table cell: 'gain', 'cost', 'none' or 'none after Holm; uncorrected
    interval excludes 0' (the full sentence is ``v.phrase``)."""
    if v.effect == "withheld":
        return "no comparison"
    if v.effect != "none":
        return v.effect
    gain_side = v.low > v.null if v.higher_is_better else v.high < v.null
    cost_side = v.high < v.null if v.higher_is_better else v.low > v.null
    if gain_side or cost_side:
        after = "after Holm" if v.p_holm is not None else f"by {v.test}"
        return f"none {after}; uncorrected interval excludes {v.null:g} ({'gain' if gain_side else 'cost'} side)"
    return "none"


def table(family: Sequence[Verdict]):
    """A family as a pandas table of strings, each number to the digits it carries: short contrast labels (the
    shared prefix is the table's ``attrs['title']``), n, estimate [95 % interval], MDE, test, p, Holm p, verdict."""
    pd = require("pandas", purpose="verdicts.table")
    title, labels = short_labels([v.contrast for v in family])
    rows = [{"contrast": label, "n": f"{v.n:,}", "estimate [95% interval]": v._interval(v.unit),
             "MDE": f"{v.mde:.{v.digits}f}", "test": v.test, "p": format_p(v.p), "Holm p": format_p(v.p_holm),
             "verdict": short_verdict(v)} for label, v in zip(labels, family)]
    out = pd.DataFrame(rows)
    out.attrs["title"] = title
    return out


def details_html(frame, *, summary: str) -> str:
    """A table collapsed under a clickable ``summary`` line (an HTML ``<details>`` block, for a cell's output)."""
    import html

    return (f"<details class=\"verdict-table\"><summary>{html.escape(summary)}</summary>\n"
            + frame.to_html(index=False, border=0, escape=True) + "\n</details>")


def bullets(lines: Sequence[str]) -> str:
    """Findings as a Markdown bullet list (for ``IPython.display.Markdown``): one bullet per line, with the
    characters Markdown would read as markup (``* _ ` [ ] < > $ | #``) escaped, so a line shows as written."""
    import re

    def escape(line: str) -> str:
        return re.sub(r"([\\`*_\[\]<>$|#])", r"\\\1", line.strip().removeprefix("- "))

    return "\n".join(f"- {escape(line)}" for line in lines if line.strip())
