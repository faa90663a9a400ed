"""Measured per-image costs of a PredNet and the runtime of a paper-scale run computed from them.

Only measured numbers: :func:`measure_costs` times the network on the device it sits on (CPU: process CPU time,
summed over its threads; GPU: wall time after ``torch.cuda.synchronize``) and records the hardware.
:func:`runtime_table` multiplies those costs by the number of image passes a run makes. Its one formula::

    forward cost at horizon T   c(T) = c(0) + T * c_step          (the dynamics unroll T identical steps)
    gradient cost at horizon T  g(T) = g(0) + T * g_step          (measured at a small k, g_step = (g(k) - g(0)) / k)

To get the numbers of a GPU (a Colab T4, an A100), run the same measurement there (the chapter with
``DEVICE = "cuda"``); nothing here converts CPU numbers into GPU numbers. Nothing runs at import.
"""
from __future__ import annotations

import platform
import statistics
import time

import torch
from torch import nn

__all__ = ["hardware", "provenance", "measure_costs", "runtime_rows", "runtime_table"]


def hardware(device) -> str:
    """A one-line description of ``device``: the GPU's name, or the CPU model, its cores and torch's threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    threads = torch.get_num_threads()
    return f"{model}, {os.cpu_count()} cores visible, {threads} torch threads (torch {torch.__version__})"


def provenance(device, *, run: str) -> str:
    """'RUN, DATE UTC, on HARDWARE': the label every printed number of chapter 7 carries."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    return f"{run}, {now} UTC, on {hardware(device)}"


def _timed(fn, *, device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call (CPU time on the CPU)."""
    cuda = torch.device(device).type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = clock()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(clock() - start)
    return statistics.median(times)


def _gradient(net, x, y, timestep: int):
    """One forward and backward pass of the cross-entropy at ``timestep`` w.r.t. the input (an attack step)."""
    from .attacks import TimestepLogits

    model = TimestepLogits(net, timestep=timestep, gradient="full")

    def run():
        delta = torch.zeros_like(x, requires_grad=True)
        loss = nn.functional.cross_entropy(model(x + delta), y)
        torch.autograd.grad(loss, delta)
    return run


def _per_batch(net, x, y, *, timesteps: int, grad_timesteps: int, repeats: int) -> dict:
    """Seconds per batch of each measured quantity (see :func:`measure_costs`)."""
    import pcnet

    device = x.device
    optimizer = torch.optim.SGD(net.decoders.parameters(), lr=0.0)
    with torch.no_grad():
        backbone, t0, tt = (_timed(f, device=device, repeats=repeats) for f in (
            lambda: net.backbone(x), lambda: net(x, timesteps=0), lambda: net(x, timesteps=timesteps)))
    train = _timed(lambda: pcnet.feedback_step(net, x, optimizer), device=device, repeats=repeats)
    net.eval()
    g0, gk = (_timed(_gradient(net, x, y, k), device=device, repeats=repeats) for k in (0, grad_timesteps))
    return {"backbone": backbone, "t0": t0, "step": (tt - t0) / timesteps, "train": train, "grad0": g0,
            "grad_step": (gk - g0) / grad_timesteps}


def measure_costs(net, *, batch: int, timesteps: int, grad_timesteps: int = 2, repeats: int = 3,
                  seed: int = 0) -> dict:
    """Per-image seconds of ``net`` on its device with a batch of random images: ``backbone`` (one plain pass),
    ``t0`` (the PredNet at t = 0), ``step`` (one timestep, from a run of ``timesteps``), ``train`` (one decoder
    training step, lr 0 so nothing changes), ``grad0`` and ``grad_step`` (an attack's forward-backward at t = 0
    and per timestep, from ``grad_timesteps``). Also the hardware, the clock and the settings.

    On a CPU it measures with one torch thread: process CPU time then counts work, not the spinning of idle
    threads, so it stays meaningful on a shared machine (wall time with k idle cores is about CPU time / k at best).
    """
    device = next(net.parameters()).device
    size = net.input_shape[-1]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g).to(device)  # (B, 3, H, W)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device)  # (B,)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        per = _per_batch(net, x, y, timesteps=timesteps, grad_timesteps=grad_timesteps, repeats=repeats)
        where = hardware(device)
    finally:
        torch.set_num_threads(threads)
    return {"per_image_s": {k: v / batch for k, v in per.items()}, "hardware": where, "device": str(device),
            "clock": "wall (CUDA synchronised)" if device.type == "cuda" else "process CPU time, 1 thread",
            "batch": batch, "timesteps": timesteps, "grad_timesteps": grad_timesteps, "repeats": repeats,
            "image_size": size}


def runtime_rows(costs: dict, *, n_train: int, epochs: int, n_eval: int, sigmas: int, n_corrupt: int,
                 corruptions: int, severities: int, n_attack: int, eps: int, attack_steps: int,
                 timesteps: int, batchnorm: bool = True, attacks: int = 2) -> list[dict]:
    """Image passes of a paper-scale run times the measured per-image costs (``costs["per_image_s"]``); without
    ``batchnorm`` (VGG16) the run has no BN adaptation and TENT, so their rows are left out. ``attacks``: how many
    gradient attacks run at every budget (APGD-CE and APGD-DLR by default)."""
    c = costs["per_image_s"]
    negative = {k: v for k, v in c.items() if not v >= 0}
    if negative:
        raise ValueError(f"measured costs {negative} are negative: timing noise exceeded the cost of a timestep; "
                         f"measure again with more repeats= or a larger timesteps= (on an idle machine)")
    forward_T = c["t0"] + timesteps * c["step"]
    grad_T = c["grad0"] + timesteps * c["grad_step"]
    rows = [("feedback training", epochs * n_train, c["train"]),
            ("Gaussian noise: dynamics + 3 feedback controls", n_eval * sigmas * 4, forward_T),
            ("Gaussian noise: rescale + BN adaptation (2 passes)", n_eval * sigmas * (3 if batchnorm else 1),
             c["backbone"]),
            *([("Gaussian noise: TENT (forward-backward)", n_eval * sigmas, c["grad0"])] if batchnorm else []),
            ("ImageNet-C: dynamics + 3 feedback controls", n_corrupt * corruptions * severities * 4, forward_T),
            ("ImageNet-C: rescale, BN adaptation and their backbone references",
             n_corrupt * corruptions * severities * (5 if batchnorm else 2), c["backbone"]),
            *([("ImageNet-C: TENT (forward-backward)", n_corrupt * corruptions * severities, c["grad0"])]
              if batchnorm else []),
            ("attacks at t=0 (forward-backward per step)", attacks * n_attack * eps * attack_steps, c["grad0"]),
            ("attacks at t=T (forward-backward per step)", attacks * n_attack * eps * attack_steps, grad_T)]
    return [{"task": task, "image passes": passes, "s per pass": cost, "hours": passes * cost / 3600}
            for task, passes, cost in rows]


def runtime_table(costs: dict, **plan):
    """:func:`runtime_rows` as a pandas table with a total row, labelled with the hardware that was measured."""
    import pandas as pd

    table = pd.DataFrame(runtime_rows(costs, **plan)).set_index("task")
    table.loc["total"] = [table["image passes"].sum(), float("nan"), table["hours"].sum()]
    table["image passes"] = table["image passes"].astype(int)
    table.attrs["hardware"] = costs["hardware"]
    return table.round({"s per pass": 4, "hours": 2})
