"""The predictive-coding update equations, one function each (labels refer to the book's equations).

Notation: ``state`` e_n(t) of PCoder n, ``feedforward`` F_n(e_{n-1}(t+1)), ``prediction`` D_{n+1}(e_{n+1}(t))
from the PCoder above, ``target`` e_{n-1}(t) (the image for n = 1), ``error`` eps_{n-1}(t).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import decoders as dec

ERROR_SCALES = ("projective", "mean")


def update_state(state, *, feedforward, prediction, error_grad, beta, lam, alpha, out=None):
    """Eq. eq-update: e_n(t+1) = beta F_n(e_{n-1}(t+1)) + lam D_{n+1}(e_{n+1}(t))
    + (1 - beta - lam) e_n(t) - alpha grad eps_{n-1}(t).

    ``prediction`` is None for the top PCoder (no feedback); ``error_grad`` None means the term is 0.
    Coefficients are floats or 0-dim tensors (differentiable when learnable); without grad mode they
    must be floats, and ``out`` (a tensor shaped like ``state``, distinct from the inputs) may receive the result.
    """
    if not torch.is_grad_enabled():  # the same sum accumulated in one buffer (no graph to keep intact)
        new = torch.mul(feedforward, beta, out=out).add_(state, alpha=1 - beta - lam)  # (B, C, H, W)
        if prediction is not None:
            new.add_(prediction, alpha=lam)
        if error_grad is not None:
            new.sub_(error_grad, alpha=alpha)
        return new
    new = beta * feedforward + (1 - beta - lam) * state  # (B, C, H, W): eq-feedforward + eq-memory
    if prediction is not None:
        new = new + lam * prediction  # eq-feedback
    if error_grad is not None:
        new = new - alpha * error_grad  # eq-error-grad
    return new


def reconstruction_error(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Eq. eq-error: eps_{n-1}(t) = || e_{n-1}(t) - D_n(e_n(t)) ||^2, one value per sample, shape (B,)."""
    return (target - prediction).pow(2).flatten(1).sum(1)  # (B,)


def error_scale(*, mode: str, projective_field: float, batch: int, numel: int) -> float:
    """Factor applied to the gradient of the summed squared error (eq. eq-error-grad).

    ``"projective"`` (default): 1/sqrt(C), C the decoder's projective-field size (eq. eq-projective-field);
    per sample, independent of batch size. ``"mean"``: 1/(B K), the original package's gradient of a mean
    over the whole batch (K elements per sample), which shrinks with batch and tensor size.
    """
    if mode == "projective":
        return 1.0 / math.sqrt(projective_field)
    if mode == "mean":
        return 1.0 / (batch * numel)
    raise ValueError(f"error_scale must be one of {ERROR_SCALES}, got {mode!r}")


def error_gradient(decoder: nn.Module, state, target, *, scale: float, create_graph: bool):
    """Eq. eq-error-grad by autograd: scale * grad_{e_n} sum_b eps_{n-1}(t); returns (prediction, grad).

    With ``create_graph`` the gradient is itself differentiable (w.r.t. input and hyperparameters).
    """
    with torch.enable_grad():
        leaf = state if state.requires_grad else state.detach().requires_grad_()
        prediction = decoder(leaf)  # (B, C', H', W')
        total = reconstruction_error(target, prediction).sum() * scale
        (grad,) = torch.autograd.grad(total, leaf, create_graph=create_graph)
    return prediction, grad  # grad: (B, C, H, W)


def error_gradient_adjoint(decoder: nn.Sequential, state, target, *, scale: float, workspace: dict | None = None):
    """Eq. eq-error-grad without a graph: the decoder's adjoint applied to d eps / d prediction.

    d/dp sum || target - p ||^2 = 2 (p - target); returns (prediction, grad) like :func:`error_gradient`.
    ``workspace``: a dict kept across timesteps whose buffers are reused (see :func:`decoders.scratch`).
    """
    prediction, tape = dec.forward_with_tape(decoder, state, workspace=workspace)  # (B, C', H', W')
    signal = dec.scratch(workspace, "signal", prediction)  # (B, C', H', W')
    torch.sub(prediction, target, out=signal).mul_(2 * scale)
    return prediction, dec.adjoint(tape, signal, inplace=True)  # (B, C, H, W)


def fixed_point_scale(*, beta: float, lam: float) -> float:
    """Eq. eq-fixed-point: with the prediction replaced by 0 and alpha = 0, e = beta F + (1-beta-lam) e
    settles at e = beta / (beta + lam) F."""
    if beta + lam == 0:
        raise ValueError("beta + lam = 0: the state never moves, there is no fixed point to rescale to")
    return beta / (beta + lam)
