"""Training the feedback decoders: reconstruction at t = 0, backbone frozen."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import wiring


def feedback_loss(net, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. eq-feedback-loss: L = sum_n MSE(D_n(e_n(0)), e_{n-1}(0)) on clean images.

    The backbone pass runs without gradients and in eval mode, so only the decoders can learn and BatchNorm
    statistics stay as they are. Returns the total loss (scalar, differentiable) and the per-layer losses (N,),
    detached.
    """
    net.check_input(x)
    with torch.no_grad(), wiring.eval_mode(net.backbone):
        states, _ = net.feedforward(x)  # e_n(0) for every PCoder
    targets = [x] + states[:-1]
    losses = torch.stack([F.mse_loss(d(s), tgt) for d, s, tgt in zip(net.decoders, states, targets)])  # (N,)
    return losses.sum(), losses.detach()


def feedback_step(net, x: torch.Tensor, optimizer: torch.optim.Optimizer, *, scaler=None) -> torch.Tensor:
    """One optimiser step on :func:`feedback_loss`; returns the per-layer losses (N,).

    A non-finite loss, gradient or updated weight raises FloatingPointError and leaves the decoders as they were.
    ``scaler``: an enabled ``torch.amp.GradScaler`` (float16 autocast): the loss is scaled before the backward
    pass, and a step whose scaled gradients overflow is skipped and the scale lowered, as the scaler does (not
    an error).
    """
    net.train()  # decoders train; the backbone stays in eval mode (PredNet.train)
    optimizer.zero_grad(set_to_none=True)
    total, per_layer = feedback_loss(net, x)
    if not torch.isfinite(total):
        raise FloatingPointError(f"the feedback loss is not finite (per layer: {per_layer.tolist()}); this step was "
                                 f"not taken. Lower the learning rate or check the decoder weights")
    if scaler is not None and scaler.is_enabled():
        scaler.scale(total).backward()
        scaler.step(optimizer)  # unscales; skips the step if a gradient overflowed
        scaler.update()
        bad = [n for n, d in enumerate(net.decoders) if any(not torch.isfinite(p).all() for p in d.parameters())]
        if bad:
            raise FloatingPointError(f"non-finite weights in decoder(s) {bad} (loss {per_layer.tolist()}); "
                                     f"lower the learning rate")
        return per_layer
    total.backward()
    params = [p for p in net.decoders.parameters() if p.grad is not None]
    before = [p.detach().clone() for p in params]
    bad = [n for n, d in enumerate(net.decoders)
           if any(p.grad is not None and not torch.isfinite(p.grad).all() for p in d.parameters())]
    if not bad:
        optimizer.step()
        bad = [n for n, d in enumerate(net.decoders) if any(not torch.isfinite(p).all() for p in d.parameters())]
    if bad:
        with torch.no_grad():
            for p, old in zip(params, before):
                p.copy_(old)
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(f"non-finite gradient or weights in decoder(s) {bad} (loss {per_layer.tolist()}); "
                                 f"this step was undone. Lower the learning rate")
    return per_layer
