"""Finding the chosen layers in a backbone and probing their shapes once, with clear errors."""
from __future__ import annotations

import difflib
import functools
from contextlib import contextmanager
from typing import Callable, Sequence

import torch
from torch import nn


def resolve(model: nn.Module, layers: Sequence[str]) -> list[nn.Module]:
    """The modules at dotted paths ``layers`` (names from ``model.named_modules()``)."""
    if isinstance(layers, str) or not layers:
        raise ValueError("layers must be a non-empty list of module paths, e.g. layers=['features.3', 'features.8']")
    names = dict(model.named_modules())
    out = []
    for path in layers:
        if not isinstance(path, str) or path not in names or path == "":
            near = difflib.get_close_matches(str(path), [n for n in names if n], n=4, cutoff=0.5)
            hint = f"; did you mean {near}?" if near else "; list them with [n for n, _ in model.named_modules()]"
            raise ValueError(f"unknown module path {path!r}{hint}")
        out.append(names[path])
    if len(set(map(id, out))) != len(out):
        raise ValueError(f"layers {list(layers)} name the same module twice; each PCoder needs its own module")
    return out


@contextmanager
def hooked(modules: Sequence[nn.Module], fn: Callable[[int, torch.Tensor], torch.Tensor | None]):
    """Forward hooks calling ``fn(n, output)`` on each module for the duration of the block only.

    Whatever ``fn`` returns (if not None) replaces the module's output. The hooks are always removed,
    so nothing stays attached to the user's model.
    """
    handles = [m.register_forward_hook(functools.partial(_call, fn=fn, n=n)) for n, m in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def sequential_suffix(model: nn.Module, path: str) -> list[nn.Module] | None:
    """The modules that run after the module at ``path``, in order, when ``model`` and every container on the
    way to ``path`` are plain ``nn.Sequential`` (whose forward is the chain of its children); None otherwise.

    Running them on that module's output gives the model's output, so the part before it can be skipped.
    None too when a container or a skipped module carries hooks (they would silently stop firing).
    """
    module, rests = model, []
    for part in path.split("."):
        if type(module) is not nn.Sequential or _hooked(module):
            return None
        children = list(module._modules.items())  # every position, even a module repeated in the chain
        index = [name for name, _ in children].index(part)
        if any(_hooked(m) for _, child in children[:index] for m in child.modules()):
            return None
        rests.append([child for _, child in children[index + 1:]])
        module = children[index][1]
    return [m for rest in reversed(rests) for m in rest]  # the innermost chain continues first


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _call(module, inputs, output, *, fn, n):
    return fn(n, output)


@torch.no_grad()
def probe(model: nn.Module, layers: Sequence[str], modules: Sequence[nn.Module], input_shape) -> dict:
    """One forward pass on a fixed random input: each layer's output shape, whether it is non-negative,
    and checks that every layer runs exactly once, in the order given."""
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (channels, height, width), got {input_shape}")
    p = next(model.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *input_shape, generator=gen).to(device=device, dtype=dtype)  # (2, C, H, W)
    calls: list[int] = []
    seen: dict[int, torch.Tensor] = {}

    def record(n, out):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"layer {layers[n]!r} returns {type(out).__name__}, not a tensor; choose a module "
                            f"whose output is one tensor")
        calls.append(n)
        seen[n] = out
        versions[n] = out._version  # bumped by any later in-place change

    versions: dict[int, int] = {}
    with hooked(modules, record):
        model(x)
    _check_calls(layers, calls)
    for n, out in seen.items():
        if out._version != versions[n]:
            raise ValueError(f"the output of layer {layers[n]!r} is changed in place later in the forward pass "
                             f"(e.g. by a ReLU(inplace=True)), so it cannot be a PCoder state; choose the module that makes "
                             f"the final value (e.g. that ReLU) or build the model with inplace=False")
    return {"shapes": [tuple(seen[n].shape[1:]) for n in range(len(layers))],
            "nonnegative": [bool((seen[n] >= 0).all()) for n in range(len(layers))]}


def _check_calls(layers: Sequence[str], calls: list[int]) -> None:
    for n, path in enumerate(layers):
        k = calls.count(n)
        if k == 0:
            raise ValueError(f"layer {path!r} never ran in a forward pass; choose a module on the forward path")
        if k > 1:
            parent = path.rsplit(".", 1)[0] if "." in path else "its parent block"
            raise ValueError(f"layer {path!r} runs {k} times per forward (a shared module); a PCoder needs a "
                             f"module that runs once, e.g. the enclosing block {parent!r}")
    order = list(dict.fromkeys(calls))
    if order != list(range(len(layers))):
        raise ValueError(f"layers must be listed in forward order: got {list(layers)}, the forward pass reaches "
                         f"them as {[layers[n] for n in order]}")
