"""Feedback decoders D_n: construction, a forward that remembers what its adjoint needs, the adjoint
itself (the error gradient without an autograd graph), and the projective-field size C.

A decoder whose layers are all of the kinds below (nn.Sequential of Upsample, ConvTranspose2d, Conv2d,
ReLU, Identity) gets the direct adjoint; any other decoder falls back to autograd for its gradient.
"""
from __future__ import annotations

import functools

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


def clone_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook that :func:`pcnet.predify` puts on a decoder that changes its input in place (e.g. one
    beginning with ``ReLU(inplace=True)``): the decoder then gets a copy, so the state e_n it reads stays as it was
    and the logits equal those of the same decoder out of place."""
    return (args[0].clone(), *args[1:])  # (B, C, H, W)


def supports_adjoint(decoder: nn.Module) -> bool:
    """True when every layer of ``decoder`` has a direct adjoint (see module docstring)."""
    if not isinstance(decoder, nn.Sequential):
        return False
    for m in decoder:
        if not isinstance(m, ADJOINT_LAYERS):
            return False
        if isinstance(m, nn.Upsample) and m.mode not in ("nearest", "bilinear"):
            return False
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
            return False  # padding="same"/"valid": autograd computes the gradient
    return True


def forward_with_tape(decoder: nn.Sequential, state: torch.Tensor, *,
                      workspace: dict | None = None) -> tuple[torch.Tensor, list]:
    """Run ``decoder`` on ``state`` (B, C, H, W); return the prediction and a tape for :func:`adjoint`.

    Nearest x2 upsampling followed by a 3x3 transposed convolution is computed as one stride-2 transposed
    convolution with a folded 4x4 kernel (:func:`folded_weight`): the same map, a quarter of the work.
    With a ``workspace`` (see :func:`scratch`; one dict per decoder, kept while its weights do not change) the
    folded kernels and output buffers are reused, and ReLUs act in place on intermediates (never on ``state``).
    """
    tape, h, layers, i = [], state, list(decoder), 0
    while i < len(layers):
        m = layers[i]
        if i + 1 < len(layers) and _foldable(m, layers[i + 1], tuple(h.shape[-2:])):
            conv = layers[i + 1]
            kernels = None if workspace is None else workspace.get(("kernels", i))  # weights are fixed within a run
            if kernels is None:
                weight = folded_weight(conv.weight)  # (C_in, C_out, 4, 4)
                kernels = (weight, *phase_kernel(weight, conv.bias))
                if workspace is not None:
                    workspace[("kernels", i)] = kernels
            out = scratch(workspace, ("folded", i), h, (h.shape[0], conv.out_channels, 2 * h.shape[2], 2 * h.shape[3]),
                          channels_last=True)
            h = folded_forward(h, kernels[0], conv.bias, out=out, phase=kernels[1:])  # (B, C_out, 2H, 2W)
            tape.append(("folded", kernels[0]))
            i += 2
            continue
        tape.append((m, h.shape))  # each layer with its input shape
        if isinstance(m, nn.ReLU) and workspace is not None and h is not state:
            h = torch.relu_(h)  # (B, C, H, W): an intermediate of this decoder, free to overwrite
        elif isinstance(m, nn.ReLU):
            h = torch.relu(h)  # (B, C, H, W): never in place on the state, even for ReLU(inplace=True)
        else:
            h = _as_conv2d(m, h) if _stride_one_transposed(m) else m(h)
        if isinstance(m, nn.ReLU):
            tape[-1] = (m, h)  # the ReLU's output gives its derivative mask
        i += 1
    return h, tape


def scratch(workspace: dict | None, key, like: torch.Tensor, shape=None, *,
            channels_last: bool = False) -> torch.Tensor:
    """An uninitialised tensor with ``like``'s dtype and device: ``like``'s shape and memory layout, or ``shape``
    (contiguous, or channels-last when asked).

    ``workspace`` is a dict kept by the caller across timesteps: the same ``key`` returns the same buffer, so
    a run allocates its large intermediates once instead of every step (fresh large tensors cost page faults
    on CPU). None allocates a new tensor each call.
    """
    if shape is None and not channels_last:
        spec, fresh = (like.shape, like.stride()), functools.partial(torch.empty_like, like)
    else:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        shape = tuple(like.shape if shape is None else shape)
        spec = (shape, layout)
        fresh = functools.partial(torch.empty, shape, dtype=like.dtype, device=like.device, memory_format=layout)
    spec = (*spec, like.dtype, like.device)
    if workspace is None:
        return fresh()
    if key not in workspace or workspace[key][0] != spec:
        workspace[key] = (spec, fresh())
    return workspace[key][1]


def prefers_channels_last(decoder: nn.Module) -> bool:
    """True when every convolution of ``decoder`` has a kernel of at most 5x5: on CPU (oneDNN) such convolutions
    ran 1.3-5x faster on channels-last tensors, while PVGG16's 14x14 transposed convolutions ran up to 3x slower
    (measured at scripts/bench_dynamics.py's shapes on 2 AVX2 cores)."""
    convs = [m for m in decoder.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    return bool(convs) and all(max(m.kernel_size) <= 5 for m in convs)


def to_channels_last(workspace: dict | None, key, x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) in channels-last layout (copied into a :func:`scratch` buffer unless it already is)."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return x
    return scratch(workspace, key, x, channels_last=True).copy_(x)


def adjoint(tape: list, grad: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """Apply the decoder's transposed Jacobian (at the taped point) to ``grad`` (the prediction's shape).

    A transposed convolution's adjoint is a convolution with the same weight; a convolution's is a
    transposed convolution; nearest/bilinear upsampling's is its aten backward; ReLU masks (in ``grad``
    itself when ``inplace``).
    """
    for m, saved in reversed(tape):
        if isinstance(m, str):  # folded upsample + 3x3 transposed convolution
            grad = F.conv2d(grad, saved, None, stride=2, padding=1)
        elif isinstance(m, nn.ReLU):
            grad = (torch.ops.aten.threshold_backward.grad_input(grad, saved, 0, grad_input=grad) if inplace
                    else torch.ops.aten.threshold_backward(grad, saved, 0))  # (B, C, H, W): zero where the ReLU was off
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


def phase_kernel(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The four 2x2 kernels (one per output phase) of a 4x4 stride-2 transposed convolution, stacked for one
    conv2d: (4 C_out, C_in, 2, 2), phases in the order (0, 0), (0, 1), (1, 0), (1, 1); and the bias repeated.

    Per axis, even outputs 2i take z[i-1] w3 + z[i] w1 and odd outputs 2i+1 take z[i] w2 + z[i+1] w0.
    """
    flipped = weight.flip(2, 3)  # taps (3, 2, 1, 0): even phases use flipped[0::2] = (3, 1), odd ones (2, 0)
    kernel = torch.stack([flipped[:, :, a::2, c::2] for a in (0, 1) for c in (0, 1)])  # (4, C_in, C_out, 2, 2)
    kernel = kernel.transpose(1, 2).reshape(4 * weight.shape[1], weight.shape[0], 2, 2)  # (4 C_out, C_in, 2, 2)
    return kernel, None if bias is None else bias.repeat(4)


def folded_forward(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, out=None,
                   phase=None) -> torch.Tensor:
    """``conv_transpose2d(z, weight, bias, stride=2, padding=1)`` for a 4x4 ``weight``, computed as four
    2x2 convolutions (one per output phase, as one channels-last conv2d call) and interleaved: on CPU this
    is several times faster than the transposed convolution at these sizes. The result is channels-last
    (written into ``out``, of shape (B, C_out, 2H, 2W), when given); ``phase``: :func:`phase_kernel`'s
    result when already computed.
    """
    b, _, h, w = z.shape
    c_out = weight.shape[1]
    kernel, bias = phase_kernel(weight, bias) if phase is None else phase  # (4 C_out, C_in, 2, 2), (4 C_out,)
    padded = F.pad(z, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)  # mkldnn's fast layout here
    phases = F.conv2d(padded, kernel, bias)  # (B, 4 C_out, H+1, W+1), channels-last
    # phase (a, c) of output pixel (2i+a, 2j+c) sits at phases[:, (a, c, :), i+a, j+c]: one strided view holds all four
    s_b, s_c, s_h, s_w = phases.stride()
    interleaved = phases.as_strided((b, h, 2, w, 2, c_out),  # (B, H, a, W, c, C_out)
                                    (s_b, s_h, s_h + 2 * c_out * s_c, s_w, s_w + c_out * s_c, s_c))
    if out is None:
        out = torch.empty(b, c_out, 2 * h, 2 * w, dtype=z.dtype, device=z.device, memory_format=torch.channels_last)
    out.permute(0, 2, 3, 1).view(b, h, 2, w, 2, c_out).copy_(interleaved)  # (B, H, a, W, c, C_out)
    return out


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
