"""The learning-rate schedule shared by the feedback and backbone trainers (:mod:`pcnet.experiments.train`) and
the paper-scale trainer (:mod:`pcnet.experiments.train_scale`); below both, so neither imports the other for it."""
from __future__ import annotations

import math


def lr_at(step: int, total: int, lr: float, *, warmup: float = 0.1) -> float:
    """Learning rate at `step` of `total`: linear warm-up for `warmup` of the run, then cosine to 0."""
    w = max(1, int(warmup * total))
    if step < w:
        return lr * (step + 1) / w
    return lr * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def set_lr(optimizer, lr: float) -> None:
    """Set every parameter group of ``optimizer`` to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
