"""Control models for the dynamics (chapters 4-5)."""
from __future__ import annotations

import torch

from . import wiring
from .hparams import per_layer


def rescaled_forward(net, x: torch.Tensor, *, scale) -> torch.Tensor:
    """Feedforward control: the backbone with each PCoder layer's output multiplied by ``scale``.

    With ``scale = beta / (beta + lam)`` (eq. eq-fixed-point) this is the fixed point that the
    zero-prediction control settles at, reached in one pass. Returns logits (B, K).
    """
    net.check_input(x)
    factors = per_layer(scale, n=len(net.layers), name="scale")  # (N,) float64
    if not torch.isfinite(factors).all():
        raise ValueError(f"scale must be finite, got {factors.tolist()}; e.g. scale = beta / (beta + lam) "
                         f"(pcnet.dynamics.fixed_point_scale)")
    factors = factors.tolist()

    def rescale(n, out):
        return out * factors[n]  # (B, C, H, W)

    with wiring.eval_mode(net.backbone), wiring.hooked(net.pc_modules(), rescale):
        return net.backbone(x)
