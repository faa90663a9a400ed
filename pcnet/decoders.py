"""Feedback decoders D_n: construction, a forward that remembers what its adjoint needs, the adjoint
itself (the error gradient without an autograd graph), and the projective-field size C.

A decoder whose layers are all of the kinds below (nn.Sequential of Upsample, ConvTranspose2d, Conv2d,
ReLU, Identity) gets the direct adjoint; any other decoder falls back to autograd for its gradient.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

ADJOINT_LAYERS = (nn.Upsample, nn.ConvTranspose2d, nn.Conv2d, nn.ReLU, nn.Identity)


def auto_decoder(*, source: tuple[int, ...], target: tuple[int, ...], relu: bool) -> nn.Sequential:
    """Decoder from a state of shape ``source`` (C, H, W) to a prediction of shape ``target``.

    Upsample (nearest) to the exact target size when sizes differ, then a 3x3 transposed convolution,
    then a ReLU unless the target can be negative (e.g. the image).
    """
    layers: list[nn.Module] = []
    if tuple(source[1:]) != tuple(target[1:]):
        layers.append(nn.Upsample(size=tuple(target[1:]), mode="nearest"))
    layers.append(nn.ConvTranspose2d(source[0], target[0], kernel_size=3, padding=1))
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def supports_adjoint(decoder: nn.Module) -> bool:
    """True when every layer of ``decoder`` has a direct adjoint (see module docstring)."""
    if not isinstance(decoder, nn.Sequential):
        return False
    for m in decoder:
        if not isinstance(m, ADJOINT_LAYERS):
            return False
        if isinstance(m, nn.Upsample) and m.mode not in ("nearest", "bilinear"):
            return False
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.padding_mode != "zeros":
            return False
    return True


def forward_with_tape(decoder: nn.Sequential, state: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Run ``decoder`` on ``state`` (B, C, H, W); return the prediction and a tape for :func:`adjoint`."""
    tape, h = [], state
    for m in decoder:
        tape.append(h.shape)  # input shape of each layer
        h = m(h)
        if isinstance(m, nn.ReLU):
            tape[-1] = h  # the ReLU's output gives its derivative mask
    return h, tape


def adjoint(decoder: nn.Sequential, tape: list, grad: torch.Tensor) -> torch.Tensor:
    """Apply the transposed Jacobian of ``decoder`` (at the taped point) to ``grad`` (the prediction's shape).

    A transposed convolution's adjoint is a convolution with the same weight; a convolution's is a
    transposed convolution; nearest/bilinear upsampling's is its aten backward; ReLU masks.
    """
    for m, saved in zip(reversed(decoder), reversed(tape)):
        if isinstance(m, nn.ReLU):
            grad = grad * (saved > 0)  # (B, C, H, W)
        elif isinstance(m, nn.ConvTranspose2d):
            grad = F.conv2d(grad, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, nn.Conv2d):
            grad = torch.nn.grad.conv2d_input(saved, m.weight, grad, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, nn.Upsample):
            grad = _upsample_adjoint(m, grad, saved)
    return grad


def _upsample_adjoint(m: nn.Upsample, grad: torch.Tensor, in_shape: torch.Size) -> torch.Tensor:
    out_size, in_size = list(grad.shape[-2:]), list(in_shape)
    scales = _upsample_scales(m)
    if m.mode == "nearest":
        return torch.ops.aten.upsample_nearest2d_backward(grad, out_size, in_size, *scales)
    return torch.ops.aten.upsample_bilinear2d_backward(grad, out_size, in_size, bool(m.align_corners), *scales)


def _upsample_scales(m: nn.Upsample) -> tuple:
    """The (scale_h, scale_w) that F.interpolate passed to the forward kernel."""
    if m.size is not None or m.recompute_scale_factor:
        return (None, None)
    sf = m.scale_factor if isinstance(m.scale_factor, (tuple, list)) else (m.scale_factor, m.scale_factor)
    return (float(sf[0]), float(sf[1]))


@torch.no_grad()
def projective_field_size(decoder: nn.Module, *, source: tuple[int, ...]) -> int:
    """Eq. eq-projective-field: C, the number of prediction elements one state element reaches.

    Exact and deterministic: a one-hot at the centre of channel 0 is pushed through a copy of the
    decoder whose weights are replaced by their absolute values and whose biases are zero (so nothing
    cancels), with ReLUs removed; C counts the nonzero outputs. Decoders outside the supported layer
    kinds are measured with a Jacobian-vector product at an all-ones state instead.
    """
    c, h, w = source
    one_hot = torch.zeros(1, c, h, w, device=_device(decoder), dtype=_dtype(decoder))  # (1, C, H, W)
    one_hot[0, 0, h // 2, w // 2] = 1
    if not supports_adjoint(decoder):
        with torch.enable_grad():
            _, tangent = torch.func.jvp(decoder, (torch.ones_like(one_hot),), (one_hot,))
        return int((tangent != 0).sum())
    probe = copy.deepcopy(decoder)
    layers = []
    for m in probe:
        if isinstance(m, nn.ReLU):
            continue
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.weight.abs_()
            if m.bias is not None:
                m.bias.zero_()
        layers.append(m)
    return int((nn.Sequential(*layers)(one_hot) != 0).sum())


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _dtype(module: nn.Module) -> torch.dtype:
    p = next(module.parameters(), None)
    return p.dtype if p is not None else torch.float32
