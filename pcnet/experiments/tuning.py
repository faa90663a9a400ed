"""Tuning beta, lam, alpha on a validation split: a grid search and gradient descent through the dynamics.

Both take a validation set carved from the *training* data (``pcnet.experiments.data.split_train_val``); keep the
test split for final numbers only.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .optional import require
from . import devices
from .evaluate import Corruption, corrupt_dataset, evaluate_dynamics

HPARAMS = ("beta", "lam", "alpha")


def _current_hparams(net) -> dict[str, list[float]]:
    return {k: [float(v) for v in t.detach().cpu().reshape(-1)] for k, t in net.hparams().items()}


@dataclass
class GridResult:
    """rows: one dict per valid grid point (hyperparameters, score, accuracy per timestep); best: its argmax."""
    rows: list[dict]
    best: dict[str, float]
    best_score: float
    skipped: list[dict] = field(default_factory=list)

    def table(self):
        pd = require("pandas", purpose="tuning.GridResult.table")

        return pd.DataFrame([{k: v for k, v in r.items() if k != "accuracy"} for r in self.rows])


def grid_search(net, val_set: Dataset | DataLoader, *, grid: Mapping[str, Sequence[float]], timesteps: int,
                corrupt: Corruption | None = None, score: str = "final", batch_size: int = 256, seed: int = 0,
                progress: bool = True) -> GridResult:
    """Evaluate every (beta, lam, alpha) combination of ``grid`` on ``val_set``; return all scores and the best.

    grid: e.g. {"beta": [0.6, 0.8], "lam": [0.0, 0.1, 0.2], "alpha": [0.01]} (scalars, applied to every
    PCoder; keys left out keep the net's current values). Points with beta + lam > 1 are skipped.
    score: "final" = accuracy at t = T, "mean" = mean accuracy over t = 1..T. Every point sees the same
    (corrupted, from ``seed``) images. The net's hyperparameters are restored afterwards; ties go to the
    first point in grid order.
    """
    unknown = set(grid) - set(HPARAMS)
    if unknown or not grid:
        raise ValueError(f"grid keys must be among {HPARAMS} (got {sorted(grid)})")
    if score not in ("final", "mean"):
        raise ValueError(f"score must be 'final' or 'mean', got {score!r}")
    if timesteps < 1:
        raise ValueError("grid_search needs timesteps >= 1 (at t = 0 the hyperparameters play no role)")
    data = corrupt_dataset(val_set, corrupt, seed=seed)  # fixed images for every grid point
    keys = list(grid)
    original = _current_hparams(net)
    rows, skipped = [], []
    try:
        points = list(itertools.product(*(grid[k] for k in keys)))
        for values in tqdm(points, desc="grid search", disable=not progress):
            point = dict(zip(keys, (float(v) for v in values)))
            b = point.get("beta", max(original["beta"]))
            lam = point.get("lam", max(original["lam"]))
            if b + lam > 1 + 1e-9:
                skipped.append(point)
                continue
            net.set_hparams(**point)
            acc = evaluate_dynamics(net, data, timesteps=timesteps, batch_size=batch_size, progress=False).accuracy
            s = float(acc[-1] if score == "final" else acc[1:].mean())
            rows.append({**point, "score": s, "accuracy": acc.tolist()})
    finally:
        net.set_hparams(**original)
    if not rows:
        raise ValueError("every grid point had beta + lam > 1; choose smaller values")
    best_row = max(rows, key=lambda r: r["score"])  # max keeps the first of equal scores
    return GridResult(rows=rows, best={k: best_row[k] for k in keys}, best_score=best_row["score"], skipped=skipped)


def dynamics_loss(net, x: torch.Tensor, y: torch.Tensor, *, timesteps: int) -> torch.Tensor:
    """Sum over t = 0..T of the mean cross-entropy of the logits at t (the tuning objective)."""
    logits = net(x, timesteps=timesteps)  # (T+1, B, K)
    t1, b, k = logits.shape
    return F.cross_entropy(logits.reshape(t1 * b, k), y.repeat(t1), reduction="sum") / b


@dataclass
class TuneResult:
    """losses: training loss per step; history: hyperparameters (per layer) after each step; final: the last."""
    losses: list[float]
    history: list[dict[str, list[float]]]
    final: dict[str, list[float]]


def tune_hparams(net, val_set: Dataset | DataLoader, *, timesteps: int, corrupt: Corruption | None = None,
                 lr: float = 0.01, epochs: int = 1, steps: int | None = None, batch_size: int = 64, seed: int = 0,
                 progress: bool = True) -> TuneResult:
    """Adam on the learnable beta, lam, alpha, minimising :func:`dynamics_loss` on (corrupted) ``val_set``.

    ``net`` must come from ``pcnet.predify(..., learnable=True)``; only ``net.hparam_parameters()`` change
    (backbone and decoders are frozen for the duration and restored afterwards). Runs ``epochs`` passes,
    or stops after ``steps`` updates if given. Noise is drawn fresh per batch from a generator seeded by ``seed``.
    """
    params = list(net.hparam_parameters()) if hasattr(net, "hparam_parameters") else []
    if not params:
        raise ValueError("tune_hparams needs learnable hyperparameters: build the net with "
                         "pcnet.predify(..., learnable=True)")
    if timesteps < 1:
        raise ValueError("tune_hparams needs timesteps >= 1")
    ids = {id(p) for p in params}
    frozen = [(p, p.requires_grad) for p in net.parameters() if id(p) not in ids]
    device, dtype = devices.of(net)
    g_noise = torch.Generator().manual_seed(seed)
    loader = DataLoader(val_set, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(params, lr=lr)
    losses, history = [], []
    total = steps if steps is not None else epochs * len(loader)
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        bar = tqdm(total=total, desc="tuning beta/lam/alpha", disable=not progress)
        with torch.enable_grad():
            while len(losses) < total:
                for x, y in loader:
                    if corrupt is not None:
                        x = corrupt(x, generator=g_noise)
                    loss = dynamics_loss(net, x.to(device, dtype), y.to(device), timesteps=timesteps)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(float(loss.detach()))
                    history.append(_current_hparams(net))
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
                    if len(losses) >= total:
                        break
        bar.close()
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return TuneResult(losses=losses, history=history, final=_current_hparams(net))
