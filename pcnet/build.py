"""predify(): wrap a pretrained CNN into a :class:`~pcnet.core.PredNet`."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import decoders as dec
from . import dynamics, wiring
from .core import PredNet
from .hparams import PAPER_DEFAULTS, Hyperparameters


def predify(model: nn.Module, *, layers: Sequence[str], input_shape: Sequence[int], decoders=None,
            beta=PAPER_DEFAULTS["beta"], lam=PAPER_DEFAULTS["lam"], alpha=PAPER_DEFAULTS["alpha"],
            error_scale="projective", learnable: bool = False, update=None) -> PredNet:
    """Put PCoders at ``layers`` (dotted paths of ``model.named_modules()``, in forward order).

    ``input_shape`` (C, H, W) is probed once to size the decoders. ``decoders`` (one per layer, decoder n
    predicting the output of layer n-1, the image for n = 1) are built automatically when None: upsample to
    the exact target size, a 3x3 transposed convolution, and a ReLU unless the target can be negative.
    ``beta``, ``lam``, ``alpha``: a scalar (``lam`` then applies below the top PCoder) or one value per layer.
    ``error_scale``: "projective" (per-sample, 1/sqrt(C)) or "mean" (the original package's batch mean);
    see :func:`pcnet.dynamics.error_scale`; or a function ``fn(*, projective_field, batch, numel) -> float``.
    ``update``: this network's own update rule in place of eq. eq-update, a function
    ``fn(state, *, feedforward, prediction, error_grad, beta, lam, alpha) -> new state`` with the arguments of
    :func:`pcnet.dynamics.update_state` (e.g. ``lambda s, **k: pcnet.dynamics.update_state(s, **k).clamp_min(0)``);
    both the reference and the fast path call it (:meth:`~pcnet.core.PredNet.update_state`), other networks on the
    same model keep theirs; ``record=("terms",)`` still reports eq. eq-update's four terms.
    The model is put in eval mode and otherwise left untouched.
    The PredNet may be called from several threads, next to other PredNets on the same model or plain
    ``model(x)`` calls (see :class:`~pcnet.core.PredNet`); each call runs the model in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, PredNet):
        raise TypeError("model is already a PredNet; predify its backbone instead: predify(net.backbone, ...)")
    wiring.check_materialised(model, what="model")
    dynamics.error_scale(mode=error_scale, projective_field=1.0, batch=1, numel=1)  # raises for an unknown mode
    if update is not None and not callable(update):
        raise TypeError(f"update must be a function fn(state, *, feedforward, prediction, error_grad, beta, lam, "
                        f"alpha) -> new state (or None for eq. eq-update), got {type(update).__name__}")
    layers = list(layers) if not isinstance(layers, str) else layers
    was_training = model.training
    try:
        modules = wiring.resolve(model, layers)
        model.eval()
        probed = wiring.probe(model, layers, modules, input_shape)
        hyper = Hyperparameters(n=len(layers), beta=beta, lam=lam, alpha=alpha, learnable=learnable)
        decoders = _decoders(model, layers, tuple(input_shape), probed, decoders)
    except Exception:
        model.train(was_training)
        raise
    fields = [dec.projective_field_size(d, source=s) for d, s in zip(decoders, probed["shapes"])]
    return PredNet(model, layers=layers, input_shape=wiring.check_input_shape(input_shape), shapes=probed["shapes"],
                   decoders=decoders, hyper=hyper, error_scale=error_scale, projective_fields=fields, update=update)


def _decoders(model, layers, input_shape, probed, given) -> list[nn.Module]:
    shapes = probed["shapes"]
    targets = [input_shape] + shapes[:-1]
    if given is None:
        given = [dec.auto_decoder(source=shapes[n], target=targets[n], relu=n > 0 and probed["nonnegative"][n - 1])
                 for n in range(len(layers))]
    given = list(given)
    if len(given) != len(layers):
        raise ValueError(f"got {len(given)} decoders for {len(layers)} layers; pass one per layer (decoder n "
                         f"predicts layer n-1, the image for n = 1)")
    p = next(model.parameters(), None)
    for n, d in enumerate(given):
        if not isinstance(d, nn.Module) or next(d.parameters(), None) is None:
            raise TypeError(f"decoder {n} must be an nn.Module with parameters, got {type(d).__name__}")
        wiring.check_materialised(d, what=f"decoder {n}")
        if p is not None:
            d.to(device=p.device, dtype=p.dtype)
        out_shape, in_place = _output_shape(d, shapes[n], n=n)
        if in_place and not any(h is dec.clone_input for h in d._forward_pre_hooks.values()):
            d.register_forward_pre_hook(dec.clone_input)  # e.g. a leading ReLU(inplace=True) would rewrite e_n
        if out_shape != tuple(targets[n]):
            below = "the image" if n == 0 else f"layer {layers[n - 1]!r}"
            raise ValueError(f"decoder {n} (for layer {layers[n]!r}) maps {tuple(shapes[n])} to {out_shape}, "
                             f"but {below} has shape {tuple(targets[n])}; fix its upsampling size, stride or padding")
    return given


def _output_shape(decoder: nn.Module, source, *, n: int) -> tuple[tuple, bool]:
    """The decoder's output shape for one state of shape ``source``, computed on the meta device (no compute),
    and whether it changes its input in place (then :func:`pcnet.decoders.clone_input` protects the state)."""
    meta = {k: torch.empty_like(v, device="meta") for k, v in list(decoder.named_parameters()) + list(decoder.named_buffers())}
    try:
        state = torch.empty(1, *source, device="meta")  # (1, C, H, W)
        out = torch.func.functional_call(decoder, meta, (state,))
    except (NotImplementedError, RuntimeError):  # a layer without meta support: run it for real
        p = next(decoder.parameters())
        state = torch.zeros(1, *source, device=p.device, dtype=p.dtype)  # (1, C, H, W)
        with torch.no_grad():
            out = decoder(state)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"decoder {n} returns {type(out).__name__}, not one tensor; make its forward return only "
                        f"the prediction")
    return tuple(out.shape[1:]), state._version != 0
