"""Feedback weights from files and URLs: pcnet's own decoders, or the original Predify package's layout.

The original package names the decoder of PCoder n ``pcoderN.pmodule`` (N from 1). Its PVGG16 and
PEfficientNetB0 decoders are the ones :mod:`pcnet.experiments.zoo` builds, so their tensors map one to one
onto ``net.decoders`` through :data:`ORIGINAL_LAYOUT` (an explicit table: nothing is matched by shape).
Accepted checkpoint forms (see :func:`load_feedback`): a whole network's state dict (``backbone.*`` and other
non-PCoder entries are ignored), optionally under ``state_dict``/``model`` or with DataParallel's ``module.``
prefix; or one file per PCoder holding that PCoder's ``pmodule`` state dict (keys ``weight``, ``0.weight``, ...,
or ``{"pcoderweights": {"pmodule.0.weight": ..., "C_sqrt": ...}}`` as the authors' trainer saves a PCoderN).
PVGG16's PCoder 1 is accepted both as a bare ConvTranspose2d (``pcoder1.pmodule.weight``) and as their June-2021
instance's ``Sequential(ConvTranspose2d)`` (``pcoder1.pmodule.0.weight``; :data:`ALIASES`). Every refusal names
what was found and what was expected.

Two differences from the original package are handled here and stated:

- With the input normalisation inside the model (zoo's default ``normalize=True``) PCoder 1 predicts the [0, 1]
  image, while the original decoder predicts the normalised image: its last transposed convolution is rescaled
  exactly (prediction * std + mean). Its error is then measured on [0, 1] pixels, which scales the error
  gradient of PCoder 1 by std_c^2 per colour channel (about 0.05). Build the preset with ``normalize=False``
  (and normalise the images yourself) for the original's dynamics exactly.
- The original ``PCoderN`` stores sqrt(C) (its projective-field size, measured once by a Jacobian at a one-hot
  state, where ReLUs can be off) in ``pcoderN.C_sqrt``; when present it replaces pcnet's structural count, so
  ``error_scale="projective"`` then uses the original's C.
"""
from __future__ import annotations

import dataclasses
import re

import torch

__all__ = ["ORIGINAL_LAYOUT", "ALIASES", "Remote", "original_to_pcnet", "load_feedback", "read_checkpoint"]

# original module prefix -> pcnet decoders prefix; each has a ``.weight`` and a ``.bias`` tensor.
ORIGINAL_LAYOUT: dict[str, dict[str, str]] = {
    "pvgg16": {  # pcoder1's pmodule is a bare ConvTranspose2d, the others Sequential(ConvTranspose2d, ReLU)
        "pcoder1.pmodule": "0.0", "pcoder2.pmodule.0": "1.0", "pcoder3.pmodule.0": "2.0",
        "pcoder4.pmodule.0": "3.0", "pcoder5.pmodule.0": "4.0"},
    "pefficientnet_b0": {  # Sequential(Upsample, ConvTranspose2d) where the layer below is twice as large
        "pcoder1.pmodule.1": "0.1", "pcoder2.pmodule.0": "1.0", "pcoder3.pmodule.1": "2.1",
        "pcoder4.pmodule.1": "3.1", "pcoder5.pmodule.1": "4.1", "pcoder6.pmodule.0": "5.0",
        "pcoder7.pmodule.1": "6.1", "pcoder8.pmodule.0": "7.0"},
}
# Other savings of the same modules by the authors: their June-2021 PVGG16 instance (miladmozafari/predify,
# examples/PVGG/pvgg_instance.py at 2f49a67) wraps PCoder 1's ConvTranspose2d in a Sequential (key ``0.weight``).
ALIASES: dict[str, dict[str, str]] = {"pvgg16": {"pcoder1.pmodule": "pcoder1.pmodule.0"}}
_PCODER = re.compile(r"^pcoder(\d+)\.")


@dataclasses.dataclass(frozen=True)
class Remote:
    """A checkpoint to download: ``url`` and its published ``sha256`` (None: recorded on first download)."""
    url: str
    sha256: str | None = None


def read_checkpoint(source) -> dict:
    """A state dict from a path, a :class:`Remote`, an http(s)/file URL, or a dict (returned as is).

    Files are read with ``torch.load(weights_only=True)``; a file saved by ``weights.save_weights`` is
    sha256-checked against its manifest first. URLs go through :func:`pcnet.experiments.download.download`.
    """
    if isinstance(source, dict):
        return source
    if isinstance(source, str) and re.match(r"^(https?|file)://", source):
        source = Remote(source)
    if isinstance(source, Remote):
        from pcnet.experiments.data import DATA_DIR
        from pcnet.experiments.download import download

        name = source.url.rstrip("/").rsplit("/", 1)[-1]
        source = download(source.url, DATA_DIR / "downloads" / name, sha256=source.sha256)
    from pcnet.experiments.files import existing
    path = existing(source, kind="file", what="feedback checkpoint", fix="pass the path of a file saved by "
                    "`python -m pcnet.experiments.train feedback ...` or by the original package")
    from pcnet.experiments import weights

    if weights.recorded_hashes(path):
        state = weights.load_weights(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged or foreign file raises anything from KeyError to UnpicklingError
            raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); it is "
                             f"damaged or not a weights file: download it again, or pass a file saved with "
                             f"torch.save (the original package) or by pcnet's feedback training") from err
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"{path} holds a {type(state).__name__} without string keys, not a state dict; pass a file saved from "
                         f"`module.state_dict()` (the original package's checkpoints or pcnet's decoders)")
    return state


def _recorded_fit(source) -> dict | None:
    """The preset, layers and shapes a pcnet decoder file records (``weights.save_decoders``), or None."""
    if isinstance(source, (dict, Remote)) or (isinstance(source, str) and re.match(r"^(https?|file)://", source)):
        return None
    from pcnet.experiments import weights

    try:
        return weights.load_provenance(source).get("extra", {}).get("fit")
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def _flatten(state: dict) -> dict:
    """Unwrap ``state_dict``/``model`` nesting and DataParallel's ``module.`` prefix."""
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _per_pcoder(states: list) -> dict:
    """One PCoder state dict per file (in order) -> the whole-network layout ``pcoderN.pmodule.*``.

    A file holds the pmodule's state dict (``weight``, ``0.weight``, ...) or the PCoder's
    (``pmodule.0.weight``, and ``C_sqrt`` for PCoderN), optionally under ``pcoderweights`` as the authors'
    trainer saves it; ``C_sqrt`` becomes ``pcoderN.C_sqrt``."""
    out = {}
    for n, state in enumerate(states, start=1):
        state = state.get("pcoderweights", state)
        for key, value in state.items():
            out[f"pcoder{n}.C_sqrt" if key == "C_sqrt" else f"pcoder{n}.pmodule.{key.removeprefix('pmodule.')}"] = value
    return out


def original_to_pcnet(state: dict, *, preset: str, decoders: dict) -> tuple[dict, dict]:
    """Map an original-layout state dict onto pcnet decoder keys (``decoders``: the target state dict).

    Returns (decoder state dict, {"ignored": [...], "C": {n: C}}). Raises ValueError naming the fix for
    another preset's checkpoint, missing keys or wrong shapes.
    """
    if preset not in ORIGINAL_LAYOUT:
        raise ValueError(f"no original-layout mapping for preset {preset!r}; one exists for {sorted(ORIGINAL_LAYOUT)}")
    table = ORIGINAL_LAYOUT[preset]
    found = sorted({int(m.group(1)) for k in state if (m := _PCODER.match(k))})
    if found and max(found) > len(table):
        other = [p for p, t in ORIGINAL_LAYOUT.items() if len(t) == max(found)]
        raise ValueError(f"this feedback checkpoint has PCoders {found[0]}..{max(found)}, but {preset} has {len(table)}: "
                         f"it is for another preset{f' ({other[0]})' if other else ''}; load it into that preset")
    absent = [n for n in range(1, len(table) + 1) if n not in found]
    if found and absent:
        other = [p for p, t in ORIGINAL_LAYOUT.items() if len(t) == max(found) and p != preset]
        raise ValueError(f"this feedback checkpoint has PCoders {found}, but {preset} has {len(table)}: PCoder(s) "
                         f"{absent} are missing; pass all {len(table)} per-PCoder files (pcoder1 ... pcoder{len(table)}) "
                         f"or the whole-network file" + (f" (or, if it is {other[0]}'s, load it into that preset)"
                                                          if other else ""))
    mapped, missing, used = {}, [], set()
    for old, new in table.items():
        for suffix in ("weight", "bias"):
            key = f"{old}.{suffix}"
            if key not in state and f"{ALIASES.get(preset, {}).get(old, old)}.{suffix}" in state:
                key = f"{ALIASES[preset][old]}.{suffix}"  # the authors' other saving of the same module
            if key not in state:
                missing.append(key)
                continue
            value, target = state[key], decoders[f"{new}.{suffix}"]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"{key} has shape {tuple(value.shape)}, but {preset}'s decoder needs "
                                 f"{tuple(target.shape)}: the checkpoint is for another network; load it into that preset")
            mapped[f"{new}.{suffix}"] = value.detach().to(target.dtype)
            used.add(key)
    if missing:
        near = sorted(k for k in state if any(k.startswith(m.rsplit(".", 2)[0] + ".") for m in missing))[:6]
        raise ValueError(f"the feedback checkpoint lacks {missing} (found for those PCoders: {near}): it is "
                         f"incomplete (an interrupted download or a partial save) or saved from other decoder modules; "
                         f"download it again, or pass all {len(table)} per-PCoder files")
    c_sqrt = {int(m.group(1)) - 1: float(v) for k, v in state.items()
              if (m := re.match(r"^pcoder(\d+)\.C_sqrt$", k)) and float(v) > 0}
    ignored = sorted(k for k in state if k not in used and not re.match(r"^pcoder\d+\.C_sqrt$", k))
    unknown = [k for k in ignored if _PCODER.match(k)]
    if unknown:
        expected = sorted(f"{old}.{s}" for old in table for s in ("weight", "bias"))
        raise ValueError(f"unexpected PCoder entries {unknown[:4]} for {preset} (expected {expected[:4]}... and "
                         f"optionally pcoderN.C_sqrt): the checkpoint's decoders differ from the authors' {preset} "
                         f"decoders; load it into the network it was trained for")
    return mapped, {"ignored": ignored, "C": {n: c * c for n, c in c_sqrt.items()}}


def _to_unit_images(mapped: dict, net, *, preset: str) -> None:
    """Rescale PCoder 1's last transposed convolution so it predicts the [0, 1] image (prediction * std + mean)."""
    prefix = ORIGINAL_LAYOUT[preset][next(iter(ORIGINAL_LAYOUT[preset]))]
    std = torch.tensor(net.meta["std"], dtype=mapped[f"{prefix}.weight"].dtype)  # (3,)
    mean = torch.tensor(net.meta["mean"], dtype=std.dtype)  # (3,)
    mapped[f"{prefix}.weight"] = mapped[f"{prefix}.weight"] * std.view(1, 3, 1, 1)  # (C_in, 3, k, k)
    mapped[f"{prefix}.bias"] = mapped[f"{prefix}.bias"] * std + mean  # (3,)


def load_feedback(net, source) -> dict:
    """Load decoder weights into PredNet ``net`` (a zoo preset for the original layout) from ``source``:
    a path, URL or :class:`Remote` (pcnet decoders or the original layout), a list of one such per PCoder (the
    original per-PCoder files), or a state dict. Nothing is changed unless every check passes.

    Returns {"layout": "pcnet" | "original", "ignored": [keys not used], "C": {PCoder index: C from the file}}.
    """
    target = net.decoders.state_dict()
    if isinstance(source, (list, tuple)):
        if len(source) != len(net.decoders):
            raise ValueError(f"{len(source)} per-PCoder files were passed, but this network has {len(net.decoders)} "
                             f"PCoders: pass one file per PCoder, in order (pcoder1 ... pcoder{len(net.decoders)})")
        state = _per_pcoder([_flatten(read_checkpoint(s)) for s in source])
    else:
        state = _flatten(read_checkpoint(source))
        fit = _recorded_fit(source)
        here = {"layers": list(net.layers), "input_shape": list(net.input_shape), "shapes": [list(s) for s in net.shapes]}
        wrong = {k: (fit[k], v) for k, v in here.items() if fit is not None and k in fit and fit[k] != v}
        if wrong:
            raise ValueError(f"{source} holds decoders trained for " + ", ".join(f"{k}={a}" for k, (a, _) in wrong.items())
                             + "; this PredNet has " + ", ".join(f"{k}={b}" for k, (_, b) in wrong.items())
                             + ". Build the network with the recorded layers and image size, or train decoders for it")
    bad_values = [k for k, v in state.items() if not isinstance(v, torch.Tensor)][:4]
    if bad_values:
        raise ValueError(f"the feedback checkpoint's entries {bad_values} are not tensors: it is not a state dict of "
                         f"decoder weights; pass the decoders' state dict (or the original package's checkpoint)")
    extra = sorted(set(state) - set(target))
    if set(target) <= set(state) and not any(_PCODER.match(k) for k in extra):  # pcnet's own layout (+ extras?)
        if extra:
            raise ValueError(f"the feedback checkpoint has every decoder weight of this network and also {extra[:4]}, "
                             f"which no decoder has: it was saved from other decoders or another model; pass the "
                             f"file saved for this preset (net.decoders.state_dict())")
        bad = [k for k in target if tuple(state[k].shape) != tuple(target[k].shape)]
        if bad:
            raise ValueError(f"feedback weights {bad[:3]} have other shapes than this network's decoders: they were "
                             f"trained for another preset or image size; load them into that network")
        net.decoders.load_state_dict(state)
        return {"layout": "pcnet", "ignored": [], "C": {}}
    if not any(_PCODER.match(k) for k in state):
        missing = sorted(set(target) - set(state))[:4]
        raise ValueError(f"the feedback checkpoint matches neither this network's decoders (it lacks {missing}, has "
                         f"{extra[:4]} instead) nor the original package's layout (pcoderN.pmodule.*); pass the file "
                         f"saved for this preset")
    preset = getattr(net, "meta", {}).get("preset")
    mapped, report = original_to_pcnet(state, preset=preset, decoders=target)
    if net.meta.get("normalize", True):
        _to_unit_images(mapped, net, preset=preset)
    net.decoders.load_state_dict(mapped)
    with torch.no_grad():
        for n, c in report["C"].items():
            net.projective_fields[n] = c
    return {"layout": "original", **report}
