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
    """Run ``decoder`` on ``state`` (B, C, H, W); return the prediction and a tape for :func:`adjoint`.

    Nearest x2 upsampling followed by a 3x3 transposed convolution is computed as one stride-2 transposed
    convolution with a folded 4x4 kernel (:func:`folded_weight`): the same map, a quarter of the work.
    """
    tape, h, layers, i = [], state, list(decoder), 0
    while i < len(layers):
        m = layers[i]
        if i + 1 < len(layers) and _foldable(m, layers[i + 1], tuple(h.shape[-2:])):
            weight = folded_weight(layers[i + 1].weight)  # (C_in, C_out, 4, 4)
            h = folded_forward(h, weight, layers[i + 1].bias)  # (B, C_out, 2H, 2W)
            tape.append(("folded", weight))
            i += 2
            continue
        tape.append((m, h.shape))  # each layer with its input shape
        h = _as_conv2d(m, h) if _stride_one_transposed(m) else m(h)
        if isinstance(m, nn.ReLU):
            tape[-1] = (m, h)  # the ReLU's output gives its derivative mask
        i += 1
    return h, tape


def adjoint(tape: list, grad: torch.Tensor) -> torch.Tensor:
    """Apply the decoder's transposed Jacobian (at the taped point) to ``grad`` (the prediction's shape).

    A transposed convolution's adjoint is a convolution with the same weight; a convolution's is a
    transposed convolution; nearest/bilinear upsampling's is its aten backward; ReLU masks.
    """
    for m, saved in reversed(tape):
        if isinstance(m, str):  # folded upsample + 3x3 transposed convolution
            grad = F.conv2d(grad, saved, None, stride=2, padding=1)
        elif isinstance(m, nn.ReLU):
            grad = torch.ops.aten.threshold_backward(grad, saved, 0)  # (B, C, H, W): zero where the ReLU was off
        elif isinstance(m, nn.ConvTranspose2d):
            grad = F.conv2d(grad, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, nn.Conv2d):
            grad = torch.nn.grad.conv2d_input(saved, m.weight, grad, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, nn.Upsample):
            grad = _upsample_adjoint(m, grad, saved)
    return grad


def folded_weight(weight: torch.Tensor) -> torch.Tensor:
    """4x4 stride-2 transposed-convolution kernel equal to nearest x2 upsampling then ``weight`` (3x3, padding 1).

    Per axis, output r receives input floor((r + 1 - u) / 2) through tap u, so the folded taps are
    [w0, w0 + w1, w1 + w2, w2].
    """
    padded = F.pad(weight, (1, 1, 1, 1))  # (C_in, C_out, 5, 5)
    rows = padded[:, :, :-1] + padded[:, :, 1:]  # (C_in, C_out, 4, 5)
    return rows[..., :-1] + rows[..., 1:]  # (C_in, C_out, 4, 4)


def folded_forward(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv_transpose2d(z, weight, bias, stride=2, padding=1)`` for a 4x4 ``weight``, computed as four
    2x2 convolutions (one per output phase, as one channels-last conv2d call) and interleaved: on CPU this
    is several times faster than the transposed convolution at these sizes.

    Per axis, even outputs 2i take z[i-1] w3 + z[i] w1 and odd outputs 2i+1 take z[i] w2 + z[i+1] w0.
    """
    b, _, h, w = z.shape
    c_out = weight.shape[1]
    taps = ((3, 1), (2, 0))  # per phase: kernel taps for window offsets (0, 1) of the padded input
    kernel = torch.stack([weight[:, :, list(ta)][:, :, :, list(tb)] for ta in taps for tb in taps])  # (4, C_in, C_out, 2, 2)
    kernel = kernel.transpose(1, 2).reshape(4 * c_out, -1, 2, 2)  # (4 C_out, C_in, 2, 2)
    padded = F.pad(z, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)  # mkldnn's fast layout here
    phases = F.conv2d(padded, kernel).unflatten(1, (2, 2, c_out))  # (B, a, b, C_out, H+1, W+1)
    out = z.new_empty(b, c_out, h, 2, w, 2)  # (B, C_out, H, a, W, b)
    for a in (0, 1):
        for c in (0, 1):
            out[:, :, :, a, :, c] = phases[:, a, c, :, a:a + h, c:c + w]
    out = out.view(b, c_out, 2 * h, 2 * w)  # (B, C_out, 2H, 2W)
    return out if bias is None else out.add_(bias.view(1, -1, 1, 1))


def _stride_one_transposed(m: nn.Module) -> bool:
    return (isinstance(m, nn.ConvTranspose2d) and m.stride == (1, 1) and m.groups == 1 and m.output_padding == (0, 0)
            and all(d * (k - 1) >= p for d, k, p in zip(m.dilation, m.kernel_size, m.padding)))


def _as_conv2d(m: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """A stride-1 transposed convolution is a convolution with the flipped, channel-swapped kernel (faster on CPU)."""
    weight = m.weight.flip(2, 3).transpose(0, 1)  # (C_out, C_in, kH, kW)
    padding = tuple(d * (k - 1) - p for d, k, p in zip(m.dilation, m.kernel_size, m.padding))
    return F.conv2d(x, weight, m.bias, 1, padding, m.dilation)


def _foldable(up: nn.Module, conv: nn.Module, in_hw: tuple[int, int]) -> bool:
    if not (isinstance(up, nn.Upsample) and up.mode == "nearest" and isinstance(conv, nn.ConvTranspose2d)):
        return False
    if (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.output_padding, conv.groups) != \
            ((3, 3), (1, 1), (1, 1), (1, 1), (0, 0), 1):
        return False
    if up.size is not None:
        size = up.size if isinstance(up.size, (tuple, list)) else (up.size, up.size)
        return tuple(size) == (2 * in_hw[0], 2 * in_hw[1])
    sf = up.scale_factor if isinstance(up.scale_factor, (tuple, list)) else (up.scale_factor, up.scale_factor)
    return tuple(float(f) for f in sf) == (2.0, 2.0)


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

    Exact and deterministic: a one-hot at the centre of channel 0 is pushed through the decoder's linear
    layers with all weights set to one and no biases (structure only) and without ReLUs; C counts the
    nonzero outputs. Only channel 0 enters the first convolution, so this costs far less than one
    decoder pass. Decoders outside the supported layer kinds are measured with a Jacobian-vector
    product at an all-ones state instead.
    """
    c, h, w = source
    kw = {"device": _device(decoder), "dtype": _dtype(decoder)}
    if not supports_adjoint(decoder):
        one_hot = torch.zeros(1, c, h, w, **kw)  # (1, C, H, W)
        one_hot[0, 0, h // 2, w // 2] = 1
        with torch.enable_grad():
            _, tangent = torch.func.jvp(decoder, (torch.ones_like(one_hot),), (one_hot,))
        return int((tangent != 0).sum())
    x = torch.zeros(1, 1, h, w, **kw)  # (1, 1, H, W): channel 0 alone
    x[0, 0, h // 2, w // 2] = 1
    sliced = False
    for m in decoder:
        if isinstance(m, nn.Upsample):
            x = m(x)
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            weight = torch.ones_like(m.weight)  # structure only: zero or cancelling weights do not matter
            if not sliced:  # only input channel 0 is present
                if m.groups != 1:
                    c_in = weight.shape[0] if isinstance(m, nn.ConvTranspose2d) else weight.shape[1] * m.groups
                    x = torch.cat([x, x.new_zeros(1, c_in - 1, *x.shape[2:])], 1)  # (1, C_in, H, W)
                else:
                    weight = weight[:1] if isinstance(m, nn.ConvTranspose2d) else weight[:, :1]
                sliced = True
            if isinstance(m, nn.ConvTranspose2d):
                x = F.conv_transpose2d(x, weight, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
            else:
                x = F.conv2d(x, weight, None, m.stride, m.padding, m.dilation, m.groups)
    return int((x != 0).sum())  # without a convolution each channel passes on its own: channel 0 suffices


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _dtype(module: nn.Module) -> torch.dtype:
    p = next(module.parameters(), None)
    return p.dtype if p is not None else torch.float32
