"""The predictive-coding update equations, one function each (labels refer to the book's equations).

Notation: ``state`` e_n(t) of PCoder n, ``feedforward`` F_n(e_{n-1}(t+1)), ``prediction`` D_{n+1}(e_{n+1}(t))
from the PCoder above, ``target`` e_{n-1}(t) (the image for n = 1), ``error`` eps_{n-1}(t).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import decoders as dec


def update_terms(state, *, feedforward, prediction, error_grad, beta, lam, alpha) -> dict:
    """Eq. eq-update as its four terms, name -> (coefficient, tensor or None when the term is absent):

    e_n(t+1) = beta F_n(e_{n-1}(t+1)) + lam D_{n+1}(e_{n+1}(t)) + (1 - beta - lam) e_n(t) - alpha grad eps_{n-1}(t).

    ``prediction`` is None for the top PCoder (no feedback); ``error_grad`` None when alpha = 0.
    """
    return {"feedforward": (beta, feedforward),  # eq-feedforward
            "memory": (1 - beta - lam, state),  # eq-memory
            "feedback": (lam, prediction),  # eq-feedback
            "error": (-alpha, error_grad)}  # eq-error-grad


def update_state(state, *, feedforward, prediction, error_grad, beta, lam, alpha, out=None):
    """Eq. eq-update: the sum of :func:`update_terms`, e_n(t+1), shape (B, C, H, W).

    Coefficients are floats or 0-dim tensors (differentiable when learnable). ``out`` (no grad mode, float
    coefficients): a buffer shaped like ``state``, distinct from the inputs, that receives the same sum.
    """
    terms = update_terms(state, feedforward=feedforward, prediction=prediction, error_grad=error_grad,
                         beta=beta, lam=lam, alpha=alpha)
    (c0, v0), *rest = [(c, v) for c, v in terms.values() if v is not None]
    if out is None:
        return sum((c * v for c, v in rest), c0 * v0)  # (B, C, H, W)
    new = torch.mul(v0, c0, out=out)  # (B, C, H, W): the same sum accumulated in one buffer
    for c, v in rest:
        new.add_(v, alpha=c)
    return new


def reconstruction_error(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Eq. eq-error: eps_{n-1}(t) = || e_{n-1}(t) - D_n(e_n(t)) ||^2, one value per sample, shape (B,)."""
    return (target - prediction).pow(2).flatten(1).sum(1)  # (B,)


def error_scale(*, mode, projective_field: float, batch: int, numel: int) -> float:
    """Factor applied to the gradient of the summed squared error (eq. eq-error-grad).

    ``"projective"`` (default): 1/sqrt(C), C the decoder's projective-field size (eq. eq-projective-field);
    per sample, independent of batch size. ``"mean"``: 1/(B K), the original package's gradient of a mean
    over the whole batch (K elements per sample), which shrinks with batch and tensor size. Or your own:
    a function called as ``mode(projective_field=C, batch=B, numel=K)`` that returns a finite number.
    """
    if callable(mode):
        value = mode(projective_field=projective_field, batch=batch, numel=numel)
        value = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"the error_scale function {getattr(mode, '__name__', mode)!r} returned {value!r}; it "
                             f"must return a finite number (called as fn(projective_field=, batch=, numel=))")
        return float(value)
    scales = {"projective": lambda: 1.0 / math.sqrt(projective_field), "mean": lambda: 1.0 / (batch * numel)}
    if mode not in scales:
        raise ValueError(f"error_scale must be one of {tuple(scales)} or a function fn(*, projective_field, batch, "
                         f"numel) -> float, got {mode!r}")
    return scales[mode]()


def error_gradient(decoder: nn.Module, state, target, *, scale: float, create_graph: bool):
    """Eq. eq-error-grad by autograd: scale * grad_{e_n} sum_b eps_{n-1}(t); returns (prediction, grad).

    With ``create_graph`` the gradient is itself differentiable (w.r.t. input and hyperparameters); without it
    the gradient is a constant for backpropagation, while the prediction keeps its graph in grad mode.
    """
    keep = create_graph and state.requires_grad
    with torch.enable_grad():
        leaf = state if keep else state.detach().requires_grad_()
        prediction = decoder(leaf)  # (B, C', H', W')
        total = reconstruction_error(target, prediction).sum() * scale
        (grad,) = torch.autograd.grad(total, leaf, create_graph=create_graph)  # (B, C, H, W)
    if not keep and state.requires_grad and torch.is_grad_enabled():
        prediction = decoder(state)  # (B, C', H', W'): the feedback of the layer below still carries gradients
    return prediction, grad


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
