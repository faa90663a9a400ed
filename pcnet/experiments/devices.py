"""Where the book's computations run: the chapters' ``DEVICE`` parameter and optional mixed precision::

    DEVICE = devices.resolve(DEVICE)          # "cuda" / "cpu" / "mps" / None (auto), checked
    device, dtype = devices.of(net)           # where a model's parameters live
    with devices.autocast(device, "bf16"):    # mixed precision (None: full precision)
        ...

Library functions move the batches they create to ``devices.of(model)``, so a model placed with
``model.to(DEVICE)`` is all a chapter has to move.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["default", "resolve", "of", "autocast", "amp_precision", "Autocast", "PRECISIONS"]

PRECISIONS = {None: None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def default() -> str:
    """"cuda" when PyTorch sees a CUDA GPU, else "cpu" (the chapters' default ``DEVICE``)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve(device: str | torch.device | None = None, *, name: str = "DEVICE") -> torch.device:
    """The torch.device for a chapter parameter ``name``; None or "auto" picks :func:`default`.

    Raises ValueError naming the parameter when the device does not exist on this machine."""
    if device is None or device == "auto":
        return torch.device(default())
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name}={device!r} is not a device; use \"cpu\", \"cuda\" or None (auto)") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r} but this machine has no CUDA GPU that PyTorch can use "
                             f"(torch {torch.__version__}, torch.cuda.is_available() is False); set {name} = \"cpu\" "
                             f"(or choose a GPU runtime: Colab -> Runtime -> Change runtime type -> GPU)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                             f"use {name} = \"cuda:0\"")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{name}={device!r} but the Apple GPU (MPS) is not available here; set {name} = \"cpu\"")
    return dev


def of(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, floating dtype) of a module's first parameter (CPU / float32 for a parameterless module)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def autocast(device: str | torch.device, precision: str | None = None):
    """Context manager: autocast to ``precision`` ("bf16", "fp16") on ``device``; None/"fp32": no-op.

    bf16 works on CPUs and recent GPUs; fp16 is meant for CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(p for p in PRECISIONS if p)} or None, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def amp_precision(device, precision="auto") -> str | None:
    """The mixed precision to run on ``device``: ``precision`` itself unless it is "auto", which gives None (float32)
    on a CPU, "bf16" on a GPU that supports bfloat16 (``torch.cuda.is_bf16_supported()``: Ampere and newer) and
    "fp16" on the others (a T4, a V100), whose float16 training then uses a gradient scaler."""
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(f"PRECISION must be \"auto\", \"fp32\", \"bf16\" or \"fp16\", got {precision!r}")
        return None if precision == "fp32" else precision
    if torch.device(device).type != "cuda":
        return None
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


class Autocast(torch.nn.Module):
    """``model`` run under :func:`autocast` at ``precision``, its output cast back to float32 (for attacks: the
    gradient reaches the float32 input through the half-precision forward)."""

    def __init__(self, model: torch.nn.Module, *, precision: str | None):
        super().__init__()
        self.model, self.precision = model, precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self.precision):
            out = self.model(x)
        return out.float() if self.precision not in (None, "fp32") else out
