"""Paired inference for the book's verdicts: intervals, paired tests, bootstrap, multiplicity, power.

Every chapter compares two conditions on the *same* images (dynamics vs t = 0, vs a control, ...). Binary
outcomes (correct or not) are compared with the exact McNemar test (Agresti 2013, sec. 11.1) and Newcombe's
score interval for the difference of paired proportions (Newcombe 1998, method 10). Statistics such as the mCE
ratio get a paired image bootstrap with BCa intervals (Efron 1987; Efron & Tibshirani 1993, ch. 14). A family
of verdicts is corrected with Holm (1979). Each verdict carries n and the minimum detectable effect of its
paired design (80 % power, two-sided 5 %; Connor 1987 for paired proportions).

Accuracies and differences are fractions in [0, 1] unless a function says otherwise; ``format_interval`` prints
them in points (x 100) where asked. :mod:`pcnet.experiments.verdicts` turns these into the book's verdicts.
Nothing runs at import.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, NamedTuple, Sequence

import torch

from .optional import require

_NORMAL = NormalDist()
_BUDGET = 2 ** 24  # elements gathered per chunk of resamples (keeps memory to a few hundred MB)


class Interval(NamedTuple):
    """An estimate with the ends of its interval; unpacks as ``estimate, low, high``."""
    estimate: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor


# --------------------------------------------------------------------------- input checks
def _check_level(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:  # NaN fails too
        raise ValueError(f"{name} must lie strictly between 0 and 1 (e.g. 0.95), got {value!r}")


def _check_n(n: int, name: str = "n", minimum: int = 1) -> None:
    if isinstance(n, torch.Tensor) and n.numel() == 1 and not n.is_floating_point():
        n = n.item()
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) and not (
            isinstance(n, numbers.Real) and math.isfinite(n) and int(n) == n) or n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} (a count), got {n!r}")


def _tensor(x, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` (a tensor, numpy array, list or number) as a tensor; a clear TypeError for strings and objects."""
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be numbers (a tensor, numpy array or list), got a string {x!r}")
    try:
        return torch.as_tensor(x, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be numbers (a tensor, numpy array or list of numbers or bools), got "
                        f"{type(x).__name__}" + (f" of {type(x[0]).__name__}" if isinstance(x, (list, tuple)) and x
                                                 else "")) from None


def _finite(x, name: str) -> torch.Tensor:
    """:func:`_tensor` whose values are all finite (NaN or inf in a score would make every summary NaN or inf)."""
    t = _tensor(x, name)
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"{name} has {int((~torch.isfinite(t)).sum())} NaN or infinite values; drop those images "
                         f"(from every condition alike) or replace the values")
    return t


def _binary(x, name: str) -> torch.Tensor:
    """``x`` as a non-empty 1-d bool tensor of per-image outcomes."""
    t = _tensor(x, name)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: pass one outcome (bool or 0/1) per image")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-d, one outcome per image; got shape {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if not ((t == 0) | (t == 1)).all():
            raise ValueError(f"{name} must be binary (bool or 0/1 'correct' per image); found values "
                             f"{t[(t != 0) & (t != 1)][:3].tolist()}")
        t = t != 0
    return t


def _same_images(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"unpaired inputs: a has shape {tuple(a.shape)}, b {tuple(b.shape)}; pass both conditions "
                         "evaluated on the same images in the same order")


# --------------------------------------------------------------------------- paired proportions
def paired_counts(a, b) -> tuple[int, int, int, int]:
    """(n11, n10, n01, n00) of two paired binary outcomes: n10 = a right and b wrong, n01 the reverse."""
    a, b = _binary(a, "a"), _binary(b, "b")
    _same_images(a, b)
    return (int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum()))


def mcnemar_exact(n10: int, n01: int, *, mid_p: bool = False) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    Under H0 the n10 + n01 discordant images split as Bin(n10 + n01, 1/2): p = min(1, 2 P(X <= min(n10, n01))).
    ``mid_p`` subtracts P(X = min(n10, n01)) (the mid-p version, Fagerland et al. 2013). No discordant images: p = 1.
    """
    binom = require("scipy.stats", purpose="stats.mcnemar_exact").binom

    _check_n(n10, "n10", 0), _check_n(n01, "n01", 0)
    d, k = n10 + n01, min(n10, n01)
    if d == 0:
        return 1.0
    p = 2 * binom.cdf(k, d, 0.5) - (binom.pmf(k, d, 0.5) if mid_p else 0.0)
    return float(min(1.0, p))


def _wilson(x: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval (low, high) of a binomial proportion x / n."""
    p, z2 = x / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return centre - half, centre + half


def proportion_interval(correct, *, confidence: float = 0.95) -> Interval:
    """An accuracy (fraction) with its Wilson score interval, from per-image outcomes (bool or 0/1)."""
    _check_level(confidence, "confidence")
    c = _binary(correct, "correct")
    x, n = int(c.sum()), c.numel()
    low, high = _wilson(x, n, _NORMAL.inv_cdf(0.5 + confidence / 2))
    return Interval(*(torch.tensor(v, dtype=torch.float64) for v in (x / n, max(low, 0.0), min(high, 1.0))))


def newcombe_interval(n11: int, n10: int, n01: int, n00: int, *, confidence: float = 0.95) -> Interval:
    """Newcombe's score interval (1998, method 10) for p1 - p2 = (n10 - n01) / n of paired proportions.

    p1 = (n11 + n10) / n and p2 = (n11 + n01) / n get Wilson intervals (l1, u1), (l2, u2), combined with the
    correlation phi of the paired table (its numerator n11 n00 - n10 n01 reduced by n / 2 when positive,
    as in Newcombe's method 10)::

        low  = d - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)
        high = d + sqrt((u1 - p1)^2 - 2 phi (u1 - p1)(p2 - l2) + (p2 - l2)^2)
    """
    for k, v in dict(n11=n11, n10=n10, n01=n01, n00=n00).items():
        _check_n(v, k, 0)
    _check_level(confidence, "confidence")
    n = n11 + n10 + n01 + n00
    _check_n(n, "n (the number of images)")
    z = _NORMAL.inv_cdf(0.5 + confidence / 2)
    p1, p2 = (n11 + n10) / n, (n11 + n01) / n
    (l1, u1), (l2, u2) = _wilson(n11 + n10, n, z), _wilson(n11 + n01, n, z)
    margins = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    num = n11 * n00 - n10 * n01
    num = max(num - n / 2, 0.0) if num >= 0 else num
    phi = num / math.sqrt(margins) if margins > 0 else 0.0
    d = p1 - p2
    low = d - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    high = d + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return Interval(*(torch.tensor(v, dtype=torch.float64) for v in (d, low, high)))


# --------------------------------------------------------------------------- paired image bootstrap (BCa)
@dataclass(frozen=True)
class BootstrapResult:
    """Estimate, BCa interval ends, bootstrap SE and the two-sided p of ``null`` (NaN without one)."""
    estimate: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    se: torch.Tensor
    p: torch.Tensor

    @property
    def interval(self) -> Interval:
        return Interval(self.estimate, self.low, self.high)


def _statistic_rows(statistic: Callable, samples: list[torch.Tensor], rows: Callable, count: int,
                    width: int) -> torch.Tensor:
    """statistic on ``count`` rows of image indices (each ``width`` long), built chunk by chunk by rows(i, j)."""
    per_row = sum(s[..., :1].numel() for s in samples) * width
    chunk, out = max(1, _BUDGET // max(per_row, 1)), []
    for start in range(0, count, chunk):
        idx = rows(start, min(count, start + chunk))  # (b, width) image indices
        value = torch.as_tensor(statistic(*[s[..., idx].movedim(-2, 0) for s in samples])).double()  # (b, *k)
        if value.dim() == 0 or value.shape[0] != idx.shape[0]:
            raise ValueError(f"statistic must return one value per resample: got shape {tuple(value.shape)} for "
                             f"{idx.shape[0]} resamples; reduce over the last (image) dimension only")
        out.append(value)
    return torch.cat(out)


def _jackknife(statistic: Callable, samples: list[torch.Tensor], n: int, groups: int,
               g: torch.Generator) -> torch.Tensor:
    """Leave-one-group-out values (G, *k); G = n gives the ordinary jackknife, fewer groups are random."""
    order = torch.arange(n) if groups >= n else torch.randperm(n, generator=g)
    parts, out = torch.tensor_split(order, min(groups, n)), []
    for size in sorted({len(p) for p in parts}):
        block = torch.stack([p for p in parts if len(p) == size])  # (G_s, size) left-out images

        def rows(i, j, block=block):
            keep = torch.ones(j - i, n, dtype=torch.bool).scatter_(1, block[i:j], False)  # (b, n)
            return torch.arange(n).expand(j - i, n)[keep].view(j - i, n - block.shape[1])

        out.append(_statistic_rows(statistic, samples, rows, len(block), n - size))
    return torch.cat(out)


def _quantile_each(sorted_b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Linear-interpolation quantile of each column of ``sorted_b`` (B, *k) at its own level ``q`` (*k)."""
    pos = q * (sorted_b.shape[0] - 1)
    lo = pos.floor().long().clamp(0, sorted_b.shape[0] - 1)
    hi = (lo + 1).clamp(max=sorted_b.shape[0] - 1)
    v_lo, v_hi = sorted_b.gather(0, lo[None])[0], sorted_b.gather(0, hi[None])[0]
    return v_lo + (pos - lo) * (v_hi - v_lo)


def _below(theta_b: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Share of bootstrap values below ``value`` (ties count half), kept inside [1/2B, 1 - 1/2B]."""
    b = theta_b.shape[0]
    share = ((theta_b < value).sum(0) + 0.5 * (theta_b == value).sum(0)) / b
    return share.clamp(0.5 / b, 1 - 0.5 / b)


def _bca_end(theta_b: torch.Tensor, z0: torch.Tensor, acc: torch.Tensor, z_tail: float) -> torch.Tensor:
    """BCa interval end: the bootstrap quantile at level Phi(z0 + (z0 + z) / (1 - a (z0 + z))).
    Where 1 - a (z0 + z) <= 0 the level is pushed to the extreme of its side (0 or 1)."""
    z = z0 + z_tail
    den = 1 - acc * z
    extreme = torch.full_like(z, float(z_tail > 0))
    level = torch.where(den > 0, torch.special.ndtr(z0 + z / den.clamp_min(1e-12)), extreme)
    return _quantile_each(theta_b.sort(0).values, level)


def _bca_p(theta_b: torch.Tensor, z0: torch.Tensor, acc: torch.Tensor, null: float) -> torch.Tensor:
    """Two-sided p-value of ``null``: the BCa interval inverted (the level at which ``null`` is an end)."""
    w = torch.special.ndtri(_below(theta_b, torch.tensor(null, dtype=torch.float64))) - z0
    den = 1 + acc * w
    tail = torch.where(den > 0, torch.special.ndtr(w / den.clamp_min(1e-12) - z0), (w > 0).double())
    return (2 * torch.minimum(tail, 1 - tail)).clamp(max=1.0)


def bootstrap(statistic: Callable[..., torch.Tensor], *samples, n_boot: int = 2000, confidence: float = 0.95,
              seed: int = 0, null: float | None = None, groups: int = 1000) -> BootstrapResult:
    """Paired image bootstrap with a BCa interval; deterministic given ``seed``.

    ``samples`` are tensors whose last dimension indexes the same n images (e.g. correctness (C, S, T+1, n)).
    Each resample draws n image indices with replacement and applies them to every sample alike (pairing kept).
    ``statistic(*resampled)`` receives tensors with a leading resample dimension, (B, ..., n), and returns (B,)
    or ``(B, *k)``; e.g. mCE as the mean of per-corruption ratios CE_c(T) / CE_c(0), from correctness (C, S, T+1, n):
    ``lambda c: metrics.normalised_ce(c.float().mean(-1))[..., -1].mean(-1)``.
    Bias correction z0 counts ties half; the acceleration comes from a jackknife over ``groups`` random groups
    of images (the ordinary jackknife when n <= groups). ``null``: also return the two-sided p-value of the
    null value, from the BCa interval inverted (resolution about 1 / n_boot).
    """
    _check_n(n_boot, "n_boot", 2), _check_n(groups, "groups", 2), _check_level(confidence, "confidence")
    samples = [_finite(s, f"sample {i}") for i, s in enumerate(samples)]
    if null is not None and (isinstance(null, bool) or not isinstance(null, numbers.Real) or not math.isfinite(null)):
        raise ValueError(f"null must be a finite number (the no-effect value of the statistic), got {null!r}")
    if not samples or any(s.dim() == 0 for s in samples):
        raise ValueError("bootstrap needs at least one sample whose last dimension indexes images")
    n = samples[0].shape[-1]
    if any(s.shape[-1] != n for s in samples):
        raise ValueError(f"unpaired samples: last (image) dimensions {[s.shape[-1] for s in samples]} differ")
    _check_n(n, "the number of images", 2)
    g = torch.Generator().manual_seed(seed)
    estimate = _statistic_rows(statistic, samples, lambda i, j: torch.arange(n)[None], 1, n)[0]  # (*k)
    theta_b = _statistic_rows(statistic, samples, lambda i, j: torch.randint(0, n, (j - i, n), generator=g),
                              n_boot, n)  # (B, *k)
    if theta_b.isnan().any() or estimate.isnan().any():
        raise ValueError("statistic is NaN on the data or on some resamples (e.g. a ratio with a zero "
                         "denominator); use a statistic defined on every resample")
    d = (lambda t: t.mean(0) - t)(_jackknife(statistic, samples, n, groups, g))  # (G, *k)
    den = 6 * (d ** 2).sum(0) ** 1.5
    acc = torch.where(den > 0, (d ** 3).sum(0) / den.clamp_min(1e-300), torch.zeros_like(den))  # acceleration
    z0 = torch.special.ndtri(_below(theta_b, estimate))  # bias correction
    low, high = (_bca_end(theta_b, z0, acc, _NORMAL.inv_cdf(0.5 + side * confidence / 2)) for side in (-1, 1))
    p = torch.full_like(estimate, float("nan")) if null is None else _bca_p(theta_b, z0, acc, null)
    return BootstrapResult(estimate, low, high, theta_b.std(0), p)


def paired_bootstrap(a, b, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """BCa interval over images of mean(a) - mean(b); a, b: per-image scores (..., n) on the same images.

    Leading dimensions are kept (one interval per row, all rows resampled with the same images).
    """
    a, b = _finite(a, "a").double(), _finite(b, "b").double()
    _same_images(a, b)
    if a.numel() == 0:
        raise ValueError("a and b are empty: pass one score per image")
    return bootstrap(lambda x, y: (x - y).mean(-1), a, b, n_boot=n_boot, confidence=confidence, seed=seed).interval


# --------------------------------------------------------------------------- multiplicity
def holm(p_values: Sequence[float], *, alpha: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Holm's step-down correction within one family: (adjusted p-values, reject at ``alpha``).

    With p sorted ascending, adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)); reject where it is <= alpha.
    """
    p = _tensor(p_values, "holm: p_values", torch.float64).flatten()
    if p.numel() == 0:
        raise ValueError("holm: the family of p-values is empty")
    if p.isnan().any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p.tolist()}")
    _check_level(alpha, "alpha")
    m = p.numel()
    order = torch.argsort(p, stable=True)
    adj_sorted = torch.cummax((m - torch.arange(m)) * p[order], dim=0).values.clamp(max=1.0)
    adjusted = torch.empty_like(p).scatter_(0, order, adj_sorted)
    return adjusted, adjusted <= alpha


# --------------------------------------------------------------------------- power of a paired design
def _z_sum(alpha: float, power: float) -> tuple[float, float]:
    _check_level(alpha, "alpha"), _check_level(power, "power")
    return _NORMAL.inv_cdf(1 - alpha / 2), _NORMAL.inv_cdf(power)


def _t_power(effect: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample (paired) t-test for a standardised effect (mean / sd)."""
    scipy_stats = require("scipy.stats", purpose="the power of a paired t-test (stats.mde_paired, n_for_mde)")
    nct, t = scipy_stats.nct, scipy_stats.t

    crit = t.isf(alpha / 2, n - 1)
    return float(nct.sf(crit, n - 1, effect * math.sqrt(n)) + nct.cdf(-crit, n - 1, effect * math.sqrt(n)))


def _one_of(discordance: float | None, sd: float | None) -> None:
    if (discordance is None) == (sd is None):
        raise ValueError("give exactly one of discordance= (share of images the two conditions classify "
                         "differently, for paired binary outcomes) or sd= (SD of the per-image difference)")
    if discordance is not None and not 0 <= discordance <= 1:
        raise ValueError(f"discordance is a probability and must lie in [0, 1], got {discordance}")
    if sd is not None and not sd > 0:
        raise ValueError(f"sd must be > 0, got {sd}")


def mde_paired(n: int, *, discordance: float | None = None, sd: float | None = None, alpha: float = 0.05,
               power: float = 0.8) -> float:
    """Minimum detectable difference of a paired design with n images (two-sided ``alpha``, given ``power``).

    discordance psi (paired proportions, McNemar; Connor 1987): the delta solving
    ``delta sqrt(n) = z_{1-alpha/2} sqrt(psi) + z_power sqrt(psi - delta^2)`` (a fraction; x 100 for points).
    sd (paired mean difference): delta = d sd with d the effect size at which the paired t-test on n
    differences has the given power (noncentral t; needs n >= 2). Same units as sd.
    """
    _one_of(discordance, sd)
    za, zb = _z_sum(alpha, power)
    if discordance is not None:
        _check_n(n)
        root = math.sqrt(max(n + zb * zb - za * za, 0.0))
        return math.sqrt(discordance) * (math.sqrt(n) * za + zb * root) / (n + zb * zb)
    brentq = require("scipy.optimize", purpose="stats.mde_paired").brentq

    _check_n(n, "n", 2)
    high = (za + zb) / math.sqrt(n)
    while _t_power(high, n, alpha) < power:
        high *= 2
    return sd * brentq(lambda d: _t_power(d, n, alpha) - power, 1e-12, high, xtol=1e-12)


def n_for_mde(mde: float, *, discordance: float | None = None, sd: float | None = None, alpha: float = 0.05,
              power: float = 0.8) -> int:
    """Smallest number of images whose paired design detects ``mde`` (see :func:`mde_paired` for the units)."""
    _one_of(discordance, sd)
    za, zb = _z_sum(alpha, power)
    if not mde > 0:
        raise ValueError(f"mde must be > 0, got {mde}")
    if discordance is not None:
        if mde > discordance:
            raise ValueError(f"mde {mde} exceeds the discordance rate {discordance}: a paired difference of "
                             "proportions cannot be larger than the share of discordant images")
        return math.ceil((za * math.sqrt(discordance) + zb * math.sqrt(discordance - mde ** 2)) ** 2 / mde ** 2)
    lo, hi = 1, 2  # power(lo) < power <= power(hi)
    while _t_power(mde / sd, hi, alpha) < power:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _t_power(mde / sd, mid, alpha) >= power else (mid, hi)
    return hi


# --------------------------------------------------------------------------- replicates and formatting
def mean_interval(values, *, confidence: float = 0.95, dim: int = 0) -> Interval:
    """Mean over ``dim`` (e.g. over replicates) with its two-sided Student-t interval: Interval of tensors.

    One value (n = 1): the interval ends are NaN (no spread can be estimated); no value (n = 0): ValueError.
    """
    _check_level(confidence, "confidence")
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.dim() == 0 or v.shape[dim] == 0:
        raise ValueError(f"mean_interval: no values along dim {dim} (shape {tuple(v.shape)})")
    n, mean = v.shape[dim], v.mean(dim=dim)
    if n < 2:
        nan = torch.full_like(mean, float("nan"))
        return Interval(mean, nan, nan.clone())
    student_t = require("scipy.stats", purpose="stats.mean_interval").t

    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * v.std(dim=dim) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half)


def format_interval(interval, *, scale: float = 1.0, digits: int = 2, signed: bool = True, unit: str = "") -> str:
    """'+0.82 [+0.14, +1.50]' from (estimate, low, high); ``scale=100`` turns fractions into points."""
    spec = f"{'+' if signed else ''}.{digits}f"
    est, low, high = (format(float(v) * scale, spec) for v in interval)
    return f"{est} [{low}, {high}]" + (f" {unit}" if unit else "")
