"""Batch sizes from memory, not constants: what one image costs in memory, and the largest batch that fits.

A white-box attack backpropagates through the whole unrolled dynamics, so autograd keeps every timestep's
tensors: per image the memory grows linearly in the horizon T, ``a + b T`` bytes (:func:`attack_bytes_per_image`).
It is measured, not guessed: one forward pass at T = 0 and one at T = 1 on one image, with
``torch.autograd.graph.saved_tensors_hooks`` recording every tensor autograd saves for the backward pass (each
storage once, the network's parameters excluded; they are counted once per batch, not per image). An evaluation
without gradients keeps only the states and one timestep's transients: at most what a T = 1 gradient pass saves,
``a + b`` (:func:`eval_bytes_per_image`, an upper bound).

:func:`auto_batch` turns such a per-image estimate into the largest batch whose tensors, the weights and the
backward pass's gradient buffers fit in ``fraction`` of the device's free memory — ``torch.cuda.mem_get_info`` on
a GPU, the kernel's ``MemAvailable`` (or ``ram_limit``) on the CPU — and says how it got there. Convolutional
activations scale with the image's area, so an estimate measured at a small size scales to another
(:func:`scale_to`), exactly when every feature map's size scales too (VGG16 at 64 and 224 px).

Nothing runs at import.
"""
from __future__ import annotations

import dataclasses
import math

import torch

__all__ = ["Estimate", "saved_bytes", "attack_bytes_per_image", "eval_bytes_per_image", "scale_to", "free_bytes",
           "auto_batch", "resolve_batch", "GIB", "BACKWARD_FACTOR", "FRACTION"]

GIB = 2 ** 30
# The backward pass of an attack holds, beside the saved tensors, the gradients of the activations it is working
# through; 1.25 x the saved tensors covers them (checked against torch.cuda.max_memory_allocated by
# scripts/gpu_check.sh where a GPU is lent).
BACKWARD_FACTOR = 1.25
FRACTION = 0.8  # of the free memory: a margin for the allocator's fragmentation and the CUDA workspace


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes per image ``base + per_step * T`` (float32 unless measured otherwise) and the parameters' bytes."""
    base: float
    per_step: float
    params: int
    image_size: int

    def per_image(self, timesteps: int) -> float:
        return self.base + self.per_step * timesteps

    def __str__(self):
        mib = 2 ** 20
        return f"{self.base / mib:.0f} + {self.per_step / mib:.0f}·T MiB per {self.image_size}-px image"


def _param_ptrs(module) -> set:
    return {p.untyped_storage().data_ptr() for p in module.parameters()} | {
        b.untyped_storage().data_ptr() for b in module.buffers()}


def saved_bytes(fn, *, exclude: set = frozenset()) -> int:
    """Bytes of the tensors autograd saves while ``fn()`` runs (each storage once; storages in ``exclude``, e.g.
    the parameters', not counted)."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude and storage.device.type != "meta":
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _attack_pass(net, x: torch.Tensor, timesteps: int):
    """The forward pass of a white-box attack at ``timesteps``: logits at T with the gradient through the dynamics."""
    x = x.clone().requires_grad_(True)  # (B, C, H, W)
    return net.at_timestep(timesteps)(x)  # (B, K)


def attack_bytes_per_image(net, *, image_size: int | None = None) -> Estimate:
    """Measured bytes per image of an attack's forward pass through PredNet ``net``: ``base + per_step * T``
    (module docstring). ``image_size`` defaults to the network's; runs two passes on one image on its device."""
    p = next(net.parameters())
    c, h, w = net.input_shape
    if image_size is not None and image_size != h:
        raise ValueError(f"the network was built for {h}-px images, not {image_size}; measure at {h} and use scale_to")
    x = torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)  # (1, C, H, W)
    exclude = _param_ptrs(net)
    was = net.training
    net.eval()
    try:
        at0 = saved_bytes(lambda: _attack_pass(net, x, 0), exclude=exclude)
        at1 = saved_bytes(lambda: _attack_pass(net, x, 1), exclude=exclude)
    finally:
        net.train(was)
    params = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
    return Estimate(base=float(at0), per_step=float(at1 - at0), params=params, image_size=h)


def eval_bytes_per_image(estimate: Estimate) -> float:
    """An upper bound on the bytes per image of an evaluation without gradients, at any T: ``base + per_step``."""
    return estimate.per_image(1)


def scale_to(estimate: Estimate, image_size: int) -> Estimate:
    """The estimate at another image size: activations scale with the image's area."""
    k = (image_size / estimate.image_size) ** 2
    return Estimate(base=estimate.base * k, per_step=estimate.per_step * k, params=estimate.params,
                    image_size=image_size)


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_bytes(device, *, ram_limit: int | None = None) -> tuple[int, str]:
    """(free bytes, where the number comes from) on ``device``: the GPU's free memory, or on the CPU the available
    RAM, capped by ``ram_limit`` (bytes) when given."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), f"torch.cuda.mem_get_info: {free / GIB:.1f} of {total / GIB:.1f} GiB free"
    available = _mem_available()
    if available is None and ram_limit is None:
        raise ValueError("cannot read the available RAM on this system; pass ram_limit=BYTES (e.g. 4 * 2**30)")
    free = min(v for v in (available, ram_limit) if v is not None)
    return int(free), (f"available RAM {available / GIB:.1f} GiB" if available is not None else "no RAM reading") + (
        f", limited to {ram_limit / GIB:.1f} GiB" if ram_limit is not None else "")


def auto_batch(per_image: float, *, free: int, params: int = 0, backward: bool, fraction: float = FRACTION,
               cap: int = 1024) -> int:
    """The largest batch b with ``params + b * per_image * (BACKWARD_FACTOR if backward else 1) <= fraction *
    free``, at most ``cap``. Raises ValueError naming the fix when not even one image fits."""
    need = per_image * (BACKWARD_FACTOR if backward else 1.0)
    budget = fraction * free - params
    b = math.floor(budget / need) if budget > 0 else 0
    if b < 1:
        raise ValueError(f"one image needs about {need / GIB:.2f} GiB (+ {params / GIB:.2f} GiB of weights), but only "
                         f"{fraction:.0%} of {free / GIB:.2f} GiB free memory may be used: lower TIMESTEPS or the "
                         f"image size, free the device's memory, or use a larger GPU")
    return int(min(b, cap))


def resolve_batch(value, net, *, timesteps: int, backward: bool, device=None, ram_limit: int | None = None,
                  estimate: Estimate | None = None, name: str = "BATCH", report=print) -> int:
    """A chapter's batch parameter: an int is returned as is (checked); "auto" becomes :func:`auto_batch` of
    ``net``'s measured estimate (``estimate`` to reuse one) at ``timesteps`` on ``device`` (default: the
    network's), and the choice is printed through ``report``."""
    if value != "auto":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer or \"auto\" (the largest batch that fits), got {value!r}")
        return value
    device = torch.device(device) if device is not None else next(net.parameters()).device
    estimate = estimate or attack_bytes_per_image(net)
    per_image = estimate.per_image(timesteps) if backward else eval_bytes_per_image(estimate)
    free, source = free_bytes(device, ram_limit=ram_limit)
    batch = auto_batch(per_image, free=free, params=estimate.params, backward=backward)
    report(f"{name} = \"auto\" -> {batch}: {'attack' if backward else 'evaluation'} at T = {timesteps} needs about "
           f"{per_image * (BACKWARD_FACTOR if backward else 1) / 2 ** 20:.0f} MiB per image ({estimate}); {source}, "
           f"{FRACTION:.0%} of it used")
    return batch
