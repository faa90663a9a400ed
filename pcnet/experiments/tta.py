"""Test-time adaptation baselines on a feedforward classifier: BatchNorm-statistics adaptation and TENT.

These are the non-biological alternatives the predictive-coding dynamics must beat on corrupted data.

* ``BNAdapt`` (Schneider et al. 2020): normalise with statistics of the test batch, optionally mixed with the
  source statistics, mu = w * mu_source + (1 - w) * mu_batch (same for the variance), w = ``source_weight``.
* ``Tent`` (Wang et al. 2021): minimise the mean prediction entropy H(p) = -sum_k p_k log p_k over the BatchNorm
  affine parameters (gamma, beta) only, normalising with test-batch statistics. Online, as in the paper: each
  batch is predicted with the current parameters and *then* updated (the forward pass that predicts also gives
  the loss), so a batch's predictions never benefit from an update computed on that batch; with ``steps`` > 1
  the returned logits are those of the last forward pass, taken before the last update.

Both work on a deep copy of the caller's model (never modified) and ``reset()`` back to the source weights;
evaluation code resets them before every corruption x severity (Wang et al. reset per corruption), and with
``episodic=True`` before every batch.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _bn_layers(model: nn.Module) -> list[nn.Module]:
    layers = [m for m in model.modules() if isinstance(m, _BN)]
    if not layers:
        raise ValueError("model has no BatchNorm layer: BN adaptation and TENT need one (use a BN backbone)")
    return layers


class BNAdapt(nn.Module):
    """Predict with BatchNorm statistics re-estimated on each test batch. ``forward(x) -> logits (B, K)``."""

    def __init__(self, model: nn.Module, *, source_weight: float = 0.0, episodic: bool = True):
        super().__init__()
        if not 0.0 <= source_weight <= 1.0:
            raise ValueError(f"source_weight must be in [0, 1], got {source_weight}")
        self.source = copy.deepcopy(model).eval()
        self.source_weight, self.episodic = float(source_weight), episodic
        _bn_layers(self.source)
        self.reset()

    def reset(self) -> None:
        """Back to the source model's weights and running statistics."""
        self.model = copy.deepcopy(self.source)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.episodic:
            self.reset()
        for bn in _bn_layers(self.model):  # running <- w * running + (1 - w) * batch statistics
            bn.train()
            bn.momentum = 1.0 - self.source_weight
        self.model(x)  # updates the running statistics from this batch
        self.model.eval()
        return self.model(x)  # (B, K)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of softmax(logits) over the batch: -mean_b sum_k p_bk log p_bk."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1).mean()


class Tent(nn.Module):
    """TENT: entropy minimisation on BN affine parameters with test-batch statistics.

    ``forward(x)``: predict x with the current parameters, then take an Adam step (``lr``) on
    H(softmax(model(x))) (``steps`` times); returns the logits (B, K) of the last forward pass, made before the
    last update. Online within a set (parameters carry over batches) unless ``episodic``.
    """

    def __init__(self, model: nn.Module, *, steps: int = 1, lr: float = 1e-3, episodic: bool = False):
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.source = copy.deepcopy(model).eval()
        _bn_layers(self.source)
        self.steps, self.lr, self.episodic = steps, lr, episodic
        self.reset()

    def reset(self) -> None:
        """Back to the source parameters and a fresh optimiser."""
        self.model = copy.deepcopy(self.source)
        self.model.requires_grad_(False)
        params = []
        for bn in _bn_layers(self.model):
            bn.train()  # normalise with batch statistics...
            bn.track_running_stats, bn.running_mean, bn.running_var = False, None, None  # ...and only those
            for p in (bn.weight, bn.bias):
                if p is not None:
                    p.requires_grad_(True)
                    params.append(p)
        self.optimizer = torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.999))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.episodic:
            self.reset()
        with torch.enable_grad():
            for _ in range(self.steps):
                logits = self.model(x)  # (B, K): the prediction, made before this step's update
                self.optimizer.zero_grad()
                entropy(logits).backward()
                self.optimizer.step()
        return logits.detach()  # (B, K)
