"""Training the feedback decoders: reconstruction at t = 0, backbone frozen."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def feedback_loss(net, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. eq-feedback-loss: L = sum_n MSE(D_n(e_n(0)), e_{n-1}(0)) on clean images.

    The backbone pass runs without gradients, so only the decoders can learn. Returns the total loss
    (scalar, differentiable) and the per-layer losses (N,), detached.
    """
    net.check_input(x)
    with torch.no_grad():
        states, _ = net.feedforward(x)  # e_n(0) for every PCoder
    targets = [x] + states[:-1]
    losses = torch.stack([F.mse_loss(d(s), tgt) for d, s, tgt in zip(net.decoders, states, targets)])  # (N,)
    return losses.sum(), losses.detach()


def feedback_step(net, x: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One optimiser step on :func:`feedback_loss`; returns the per-layer losses (N,)."""
    net.train()  # decoders train; the backbone stays in eval mode (PredNet.train)
    optimizer.zero_grad(set_to_none=True)
    total, per_layer = feedback_loss(net, x)
    total.backward()
    optimizer.step()
    return per_layer
