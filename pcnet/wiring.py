"""Finding the chosen layers in a backbone and probing their shapes once, with clear errors."""
from __future__ import annotations

import difflib
import functools
import numbers
import threading
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

    Whatever ``fn`` returns (if not None) replaces the module's output. The hooks act only in the thread
    that entered the block: a forward pass of the same modules in another thread (a plain ``model(x)``,
    another PredNet on the same backbone, the same PredNet called concurrently) runs as if they were not
    there. The hooks are always removed, so nothing stays attached to the user's model.
    """
    owner = threading.get_ident()
    handles = [m.register_forward_hook(functools.partial(_call, fn=fn, n=n, owner=owner))
               for n, m in enumerate(modules)]
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


def in_checkpoint() -> bool:
    """True while a forward pass runs inside non-reentrant ``torch.utils.checkpoint`` (its saved-tensor hooks are
    the innermost ones); the reentrant form is seen as gradients turned off inside a grad-mode call."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    hooks = top(False) if callable(top) else None
    return bool(hooks) and getattr(hooks[0], "__module__", "") == "torch.utils.checkpoint"


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _call(module, inputs, output, *, fn, n, owner):
    if threading.get_ident() != owner:
        return None  # another thread's forward pass: leave it alone
    return fn(n, output)


_eval_lock = threading.Lock()
_eval_users: dict[int, list] = {}  # id(model) -> [number of active blocks, saved training flags]


@contextmanager
def eval_mode(model: nn.Module):
    """Run the block with every module of ``model`` in eval mode (BatchNorm uses and keeps its running
    statistics, Dropout is off), whatever the user set; the flags are restored when the last concurrent
    block on ``model`` ends. While any such block runs, other threads see ``model`` in eval mode too."""
    with _eval_lock:
        users = _eval_users.setdefault(id(model), [0, None])
        if users[0] == 0:
            users[1] = [(m, m.training) for m in model.modules()]
            if any(flag for _, flag in users[1]):
                model.eval()
        users[0] += 1
    try:
        yield model
    finally:
        with _eval_lock:
            users[0] -= 1
            if users[0] == 0:
                for m, flag in _eval_users.pop(id(model))[1]:
                    m.training = flag


def dynamics_call(method):
    """Decorator for a PredNet method that runs the dynamics: ``self.backbone`` is in :func:`eval_mode` for the
    call, and torch.compile's failure in grad mode (a compiled backward cannot build the second-order graph
    that the error gradient needs) becomes an error that says what to do."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with eval_mode(self.backbone):
            try:
                return method(self, *args, **kwargs)
            except RuntimeError as err:
                if "donated buffers" in str(err) or "double backward" in str(err):
                    raise RuntimeError("torch.compile cannot run the dynamics with gradients enabled (the error "
                                       "gradient needs create_graph=True, a double backward, which compiled autograd "
                                       "does not support); call the compiled network under torch.no_grad() or "
                                       "torch.inference_mode(), or call it uncompiled") from err
                raise
    return wrapper


@torch.no_grad()
def probe(model: nn.Module, layers: Sequence[str], modules: Sequence[nn.Module], input_shape) -> dict:
    """One forward pass on a fixed random input: each layer's output shape, whether it is non-negative,
    and checks that every layer runs exactly once, in the order given."""
    input_shape = check_input_shape(input_shape)
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
        try:
            logits = model(x)
        except (RuntimeError, ValueError, IndexError) as err:
            raise ValueError(f"the model cannot run on input_shape={input_shape} ({type(err).__name__}: {err}); pass "
                             f"the (channels, height, width) of the images the model takes") from err
    _check_calls(layers, calls)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model's forward returns a {type(logits).__name__}, not one tensor of logits (batch, "
                        f"classes); wrap it so that it does, e.g. a module whose forward returns model(x)[0] or "
                        f"model(x)['logits'], and predify the wrapper")
    for n, out in seen.items():
        if out.dim() != 4:
            raise ValueError(f"layer {layers[n]!r} outputs shape {tuple(out.shape)}, not a feature map (batch, "
                             f"channels, height, width); a PCoder needs a convolutional layer (not Linear or Flatten)")
    for n, out in seen.items():
        if out._version != versions[n]:
            raise ValueError(f"the output of layer {layers[n]!r} is changed in place later in the forward pass "
                             f"(e.g. by a ReLU(inplace=True)), so it cannot be a PCoder state; choose the module that makes "
                             f"the final value (e.g. that ReLU) or build the model with inplace=False")
    return {"shapes": [tuple(seen[n].shape[1:]) for n in range(len(layers))],
            "nonnegative": [bool((seen[n] >= 0).all()) for n in range(len(layers))]}


def check_input_shape(input_shape) -> tuple[int, int, int]:
    """``input_shape`` as a tuple of three positive ints (channels, height, width), or a clear error."""
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__") or len(input_shape) != 3 \
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in input_shape):
        raise ValueError(f"input_shape must be (channels, height, width), three positive integers, got "
                         f"{input_shape!r}; e.g. input_shape=(3, 224, 224)")
    return tuple(int(s) for s in input_shape)


def check_materialised(module: nn.Module, *, what: str) -> None:
    """A clear error when ``module`` has parameters or buffers on the meta device (shapes only, no values)."""
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        raise ValueError(f"{what} has parameters on the meta device (shapes without values); materialise it first, "
                         f"e.g. module.to_empty(device='cpu') then load_state_dict(...)")


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
