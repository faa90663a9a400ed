"""Chapter 4's experiment: what the dynamics do on the Fashion-MNIST network under noise, against controls.

One job per function: the noise conditions, the paired per-image correctness of the dynamics and of every
control (zero, shuffled and mean prediction at the same beta, lam, alpha; the fixed-point rescale), the verdict
family of a value set, a grid search that survives divergence, a per-layer rescale tuned on validation images,
BN adaptation / TENT correctness, and per-image correlation distances. The command line that runs it all on the
full test set is :mod:`pcnet.experiments.dynamics_runs`. Nothing runs at import.
"""
from __future__ import annotations

import base64
import functools
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import TensorDataset

from . import devices, evaluate, tta
from .data import as_tensors
from .verdicts import Verdict, holm_family, paired_proportions

CONTROLS = ("zero", "shuffled", "mean", "rescale")
MODES = ("prediction", "zero", "shuffled", "mean")  # feedback modes of net.run
CONTROL_NAMES = {"zero": "zero-prediction", "shuffled": "shuffled prediction", "mean": "mean prediction",
                 "rescale": "fixed-point rescale"}


# --------------------------------------------------------------------------- conditions and images
def corruption(kind: str, level: float):
    """The corruption function of a condition (None for clean images): kind 'clean', 'gaussian' or 'salt_pepper'."""
    if kind == "clean" or level == 0:
        return None
    if kind == "gaussian":
        return functools.partial(evaluate.gaussian_noise, sigma=level)
    if kind == "salt_pepper":
        return functools.partial(evaluate.salt_pepper, amount=level)
    raise ValueError(f"unknown corruption kind {kind!r}; use 'clean', 'gaussian' or 'salt_pepper'")


def label(cond: Sequence) -> str:
    """Readable name of a condition (kind, level)."""
    kind, level = cond
    names = {"clean": "clean", "gaussian": f"Gaussian σ={level:g}", "salt_pepper": f"salt & pepper {level:g}"}
    if kind not in names:
        raise ValueError(f"unknown corruption kind {kind!r}; use 'clean', 'gaussian' or 'salt_pepper'")
    return names[kind]


def conditions(*, gaussian: Sequence[float], salt_pepper: Sequence[float]) -> list[tuple[str, float]]:
    """Clean images first, then every Gaussian sigma and salt-and-pepper amount."""
    return [("clean", 0.0)] + [("gaussian", float(s)) for s in gaussian] + [("salt_pepper", float(a))
                                                                           for a in salt_pepper]


def shuffled_subset(dataset, n: int, *, seed: int = 0) -> TensorDataset:
    """The first ``n`` images of ``dataset`` in a random order fixed by ``seed`` (random batch composition)."""
    x, y = as_tensors(dataset)
    if not 1 <= n <= len(x):
        raise ValueError(f"n must lie in [1, {len(x)}], got {n}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]  # (n,)
    return TensorDataset(x[order], y[order])


def noise_seed(base: int, *, replicate: int = 0) -> int:
    """The seed of the noise draw: fixed by ``base``, redrawn for every replicate (backbone seed)."""
    return int(base) + 7919 * int(replicate)


def noisy_images(images: TensorDataset, cond: Sequence, *, seed: int) -> TensorDataset:
    """``images`` under condition ``cond``, noise drawn once from ``seed`` (then reused by every method)."""
    return evaluate.corrupt_dataset(images, corruption(*cond), seed=seed)


# --------------------------------------------------------------------------- correctness of the dynamics and controls
def fixed_point_scales(net) -> list[float]:
    """beta / (beta + lam) per PCoder (eq. eq-fixed-point) at the net's current values."""
    return evaluate._fixed_point_scales(net)


def correct_under(net, images: TensorDataset, *, control: str, timesteps: int, batch_size: int) -> torch.Tensor:
    """Per-image correctness (T+1, n) under a feedback mode of ``MODES`` or ``control="rescale"`` (the feedforward
    control: one pass, its outcome repeated at every t, see :func:`evaluate.evaluate_dynamics`)."""
    if control not in MODES + ("rescale",):
        raise ValueError(f"control must be one of {MODES + ('rescale',)}, got {control!r}")
    return evaluate.evaluate_dynamics(net, images, timesteps=timesteps, feedback=control, batch_size=batch_size,
                                      progress=False).correct


def contrast_family(runs: dict, *, what: str = "") -> list[Verdict]:
    """The verdict family of one value set and condition: dynamics at t=T vs t=0 and vs every control present.

    runs: {"prediction": {"t0": (n,), "T": (n,)}, "zero": {"T": (n,)}, ...} (bool per image, same images).
    Holm is applied by :func:`holm_family` over the whole family the caller assembles.
    """
    dyn = runs["prediction"]
    out = [paired_proportions(dyn["T"], dyn["t0"], contrast=f"{what}dynamics t=T − t=0")]
    for control in CONTROLS:
        if control in runs:
            out.append(paired_proportions(dyn["T"], runs[control]["T"],
                                          contrast=f"{what}dynamics − {CONTROL_NAMES[control]} (t=T)"))
    return out


def verdict_table(verdicts: Sequence[Verdict]):
    """A pandas table of a family (one row per contrast)."""
    import pandas as pd

    return pd.DataFrame([v.as_row() for v in verdicts]).set_index("contrast")


def family(groups: dict) -> list[Verdict]:
    """One Holm-corrected family from {condition label: runs} (see :func:`contrast_family`)."""
    return holm_family([v for name, runs in groups.items() for v in contrast_family(runs, what=f"{name}: ")])


# --------------------------------------------------------------------------- packing per-image outcomes for JSON
def pack(correct: torch.Tensor) -> str:
    """A 1-d bool tensor as base64 of its packed bits (JSON-friendly, 1,250 bytes per 10,000 images)."""
    bits = np.packbits(torch.as_tensor(correct, dtype=torch.bool).numpy())
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack(text: str, n: int) -> torch.Tensor:
    """Inverse of :func:`pack`: (n,) bool."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n]
    if len(bits) != n:
        raise ValueError(f"packed outcomes hold {len(bits)} images, expected {n}")
    return torch.from_numpy(bits.astype(bool))


# --------------------------------------------------------------------------- tuning
def grid_scores(net, images: TensorDataset, points: Sequence[dict], *, timesteps: int, batch_size: int) -> list[dict]:
    """Accuracy at t=0 and t=T for each hyperparameter point; a point whose states blow up scores 0 (diverged)."""
    from .evaluate import hparams_set

    rows = []
    for point in points:
        with hparams_set(net, **point):
            try:
                acc = evaluate.evaluate_dynamics(net, images, timesteps=timesteps, batch_size=batch_size,
                                                 progress=False).accuracy
                rows.append({**point, "t0": float(acc[0]), "score": float(acc[-1]), "diverged": False})
            except FloatingPointError:
                rows.append({**point, "t0": float("nan"), "score": 0.0, "diverged": True})
    return rows


def grid_points(*, beta: Sequence[float], lam: Sequence[float], alpha: Sequence[float]) -> list[dict]:
    """Every (beta, lam, alpha) with beta + lam <= 1, in grid order."""
    return [{"beta": float(b), "lam": float(l), "alpha": float(a)}
            for a in alpha for b in beta for l in lam if b + l <= 1 + 1e-9]


def best_point(rows: Sequence[dict]) -> dict:
    """The row with the highest score (the first of equal scores)."""
    if not rows:
        raise ValueError("best_point: no grid rows")
    return max(rows, key=lambda r: r["score"])


def on_edge(rows: Sequence[dict], key: str) -> str | None:
    """'low' or 'high' when the best row's ``key`` is the smallest or largest value of the grid, else None."""
    values, best = sorted({r[key] for r in rows}), best_point(rows)[key]
    if len(values) > 1 and best == values[0]:
        return "low"
    if len(values) > 1 and best == values[-1]:
        return "high"
    return None


def tune_rescale(net, images: TensorDataset, *, scales: Sequence[float], batch_size: int,
                 sweeps: int = 2) -> tuple[list[float], float]:
    """Per-layer rescale factors maximising accuracy of ``pcnet.rescaled_forward`` on ``images`` (coordinate
    ascent over ``scales``, ``sweeps`` passes over the PCoders, starting at 1); returns (factors, accuracy)."""
    import pcnet

    factors = [1.0] * len(net.layers)
    best = -1.0
    for _ in range(sweeps):
        for n in range(len(factors)):
            for s in scales:
                trial = factors[:n] + [float(s)] + factors[n + 1:]
                acc = float(evaluate.correct_of(lambda x: pcnet.rescaled_forward(net, x, scale=trial), images,
                                                batch_size=batch_size, progress=False).float().mean())
                if acc > best:
                    best, factors = acc, trial
    return factors, best


def adapted_correct(model, images: TensorDataset, *, method: str, batch_size: int, tent_lr: float = 1e-3):
    """(n,) correctness of BN adaptation or online TENT (predict, then update) on batches of ``batch_size``
    in the images' order (random when they come from :func:`shuffled_subset`)."""
    adapters = {"bn": lambda: tta.BNAdapt(model), "tent": lambda: tta.Tent(model, lr=tent_lr)}
    if method not in adapters:
        raise ValueError(f"method must be 'bn' or 'tent', got {method!r}")
    return evaluate.correct_of(adapters[method](), images, batch_size=batch_size, progress=False)


# --------------------------------------------------------------------------- representations
@torch.no_grad()
def state_distances(net, clean: torch.Tensor, noisy: torch.Tensor, *, timesteps: int,
                    feedback: str = "prediction") -> torch.Tensor:
    """Per-image correlation distance between the noisy and the clean state at each timestep: (T+1, N, B)."""
    if clean.shape != noisy.shape:
        raise ValueError(f"clean and noisy batches differ in shape: {tuple(clean.shape)} vs {tuple(noisy.shape)}")
    dev = devices.of(net)[0]
    tc = net.run(clean.to(dev), timesteps=timesteps, feedback=feedback, record=("states",))
    tn = net.run(noisy.to(dev), timesteps=timesteps, feedback=feedback, record=("states",))
    out = torch.empty(timesteps + 1, len(tc.states), clean.shape[0])  # (T+1, N, B)
    for n, (sc, sn) in enumerate(zip(tc.states, tn.states)):  # each (T+1, B, C, H, W)
        for t in range(timesteps + 1):
            out[t, n] = evaluate.correlation_distance(sn[t], sc[t]).cpu()
    return out
