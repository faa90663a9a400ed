"""Benchmark: cost of one timestep of the dynamics relative to one feedforward pass (fast mode).

    python scripts/bench_dynamics.py [--threads 2] [--repeats 9] [--which shallow vgg16 effnetb0] [--profile]
    python scripts/bench_dynamics.py --device cuda --amp --which vgg16 effnetb0 --batch 64   # on a GPU
    python scripts/bench_dynamics.py --device cuda --precision fp32 bf16 fp16 --which vgg16 effnetb0 --json OUT

(a) the shallow CIFAR network of the Predify follow-up (batch 128, 32x32, T=10);
(b) PVGG16 with the paper's decoders (batch 2 on the CPU, 64 on a GPU; 224x224, T=3);
(c) PEfficientNetB0 (torchvision B0) with the authors' PCoder positions and decoders (batch 8 / 64, T=3).
Untrained weights (costs do not depend on them). ``--device cuda`` synchronises the GPU around every timed call;
``--amp`` runs under bf16 autocast (``pcnet.experiments.devices.autocast``); ``--precision`` runs each listed
precision on the same network and images and reports the top-1 agreement with fp32 at every timestep (the
lowest over t); ``--json`` writes the results; ``--batch`` overrides the batches.
Per-timestep cost = (time of T steps - time of the t=0 pass) / T, divided by the backbone's own forward
time; "first call" = extra time of the first call after construction beyond a warm call of the same size.
Backbone, t=0 and T-step runs take turns within each repeat (a slow spell of a shared machine hits all three).
``--profile`` adds torch.profiler's table of the operators of one T-step run (where a timestep's time goes).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import contextlib

import torch

from pcnet import decoders as dec
from pcnet import wiring
from pcnet.experiments import devices
from pcnet.experiments import models as presets


CLOCK = time.perf_counter  # --clock cpu switches to process CPU time (robust when other jobs share the cores)
SYNC = lambda: None  # --device cuda: torch.cuda.synchronize, so a timed call includes its GPU work


def timed(fn, *, repeats: int) -> float:
    """Median time of ``fn()`` over ``repeats`` runs (seconds)."""
    return timed_together([fn], repeats=repeats)[0]


def timed_together(fns, *, repeats: int) -> list[float]:
    """Median time of each of ``fns`` over ``repeats`` rounds, the functions taking turns within each round, so
    that a slow spell of the machine (other load, frequency changes) hits all of them alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, row in zip(fns, times):
            SYNC()
            start = CLOCK()
            fn()
            SYNC()
            row.append(CLOCK() - start)
    return [statistics.median(row) for row in times]


def conv_macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the (transposed) convolutions and linear layers in one call of ``module``."""
    total = 0

    def count(m, inputs, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.ConvTranspose2d):
            total += inputs[0].numel() * m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(count) for m in module.modules()]
    try:
        module(x)
    finally:
        for h in handles:
            h.remove()
    return total


def executed_decoder_macs(decoder, state: torch.Tensor) -> int:
    """MACs of the decoder as the fast path runs it: nearest x2 upsampling + 3x3 transposed convolution counts as
    the folded stride-2 4x4 transposed convolution (16 taps per input pixel and output channel)."""
    layers, h, total, i = list(decoder), state, 0, 0
    while i < len(layers):
        if i + 1 < len(layers) and dec._foldable(layers[i], layers[i + 1], tuple(h.shape[-2:])):
            total += h.numel() * layers[i + 1].out_channels * 16
            h = layers[i + 1](layers[i](h))
            i += 2
            continue
        total += conv_macs(layers[i], h)
        h = layers[i](h)
        i += 1
    return total


def suffix_macs(suffix, h: torch.Tensor) -> int:
    """MACs of the backbone modules that a timestep runs when F_1(x) is reused (see wiring.sequential_suffix)."""
    total = 0
    for module in suffix:
        total += conv_macs(module, h)
        h = module(h)
    return total


@torch.no_grad()
def bench(name, build, *, batch, timesteps, repeats, profile=False, device="cpu", amp=False, precisions=None):
    """Per-step cost relative to the backbone; with ``precisions`` a dict per precision: ``rel`` (that ratio),
    ``per_step_ms``, ``agreement`` (lowest top-1 agreement with fp32 over t = 0..T; fp32 itself 1.0)."""
    torch.manual_seed(0)
    start = CLOCK()
    net = build().to(device)
    construct = CLOCK() - start
    x = torch.rand(batch, *net.input_shape, device=device)  # (B, C, H, W)
    if precisions is None:
        with devices.autocast(device, "bf16") if amp else contextlib.nullcontext():
            return _bench_runs(name, net, x, timesteps=timesteps, repeats=repeats, profile=profile, construct=construct)
    out, ref = {}, net(x, timesteps=timesteps).float().argmax(-1)  # (T+1, B) fp32 classes
    for precision in precisions:
        with devices.autocast(device, None if precision == "fp32" else precision):
            rel, step = _bench_runs(name, net, x, timesteps=timesteps, repeats=repeats, profile=profile,
                                    construct=construct, with_step=True)
            classes = net(x, timesteps=timesteps).float().argmax(-1)  # (T+1, B)
        agreement = float((classes == ref).float().mean(-1).min())
        print(f"  {precision}: top-1 agreement with fp32, lowest over t = 0..{timesteps}: {agreement:.3f}")
        out[precision] = {"rel": rel, "per_step_ms": step * 1e3, "agreement": agreement, "batch": batch}
    return out


def _bench_runs(name, net, x, *, timesteps, repeats, profile, construct, with_step=False):
    batch = x.shape[0]
    SYNC()
    start = CLOCK()
    net(x, timesteps=1)
    SYNC()
    first = CLOCK() - start
    warm_one = timed(lambda: net(x, timesteps=1), repeats=repeats)
    backbone, t0, full = timed_together([lambda: net.backbone(x), lambda: net(x, timesteps=0),
                                         lambda: net(x, timesteps=timesteps)], repeats=repeats)
    per_step = (full - t0) / timesteps
    states, _ = net.feedforward(x)
    backbone_macs = conv_macs(net.backbone, x)
    decoder_macs = sum(conv_macs(d, s) for d, s in zip(net.decoders, states))
    executed_macs = sum(executed_decoder_macs(d, s) for d, s in zip(net.decoders, states))
    print(f"[{name}] batch {batch}, input {net.input_shape}, T={timesteps}, repeats {repeats}, {x.device}, "
          f"{str(torch.get_autocast_dtype(x.device.type)).removeprefix('torch.') + ' autocast' if torch.is_autocast_enabled(x.device.type) else 'fp32'}")
    print(f"  construction (probe, decoders, exact projective fields): {construct:.3f} s")
    print(f"  backbone forward: {backbone * 1e3:.1f} ms; t=0 pass through pcnet: {t0 * 1e3:.1f} ms")
    print(f"  T={timesteps} run: {full * 1e3:.1f} ms; per timestep: {per_step * 1e3:.1f} ms "
          f"= {per_step / backbone:.2f}x one feedforward pass")
    suffix = wiring.sequential_suffix(net.backbone, net.layers[0])
    stepped_macs = backbone_macs if suffix is None else suffix_macs(suffix, states[0])
    print(f"  MACs: backbone {backbone_macs / 1e9:.2f} G; decoders {decoder_macs / 1e9:.2f} G as built, "
          f"{executed_macs / 1e9:.2f} G as run (folded). A timestep runs every decoder and its adjoint and "
          f"{'the whole backbone' if suffix is None else 'the backbone after the first PCoder'} "
          f"({stepped_macs / 1e9:.2f} G): >= {(stepped_macs + 2 * executed_macs) / backbone_macs:.2f}x the backbone's MACs")
    print(f"  first call beyond a warm call: {max(first - warm_one, 0.0):.3f} s (first {first:.3f} s, warm {warm_one:.3f} s)")
    if profile:
        with torch.profiler.profile(record_shapes=True) as prof:
            net(x, timesteps=timesteps)
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25))
    return (per_step / backbone, per_step) if with_step else per_step / backbone


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or process CPU time summed over threads (robust under contention)")
    parser.add_argument("--profile", action="store_true", help="print the operators of one run, by self CPU time")
    parser.add_argument("--which", nargs="+", default=["shallow", "vgg16"], choices=["shallow", "vgg16", "effnetb0"])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--batch", type=int, default=None, help="batch of every network (default: per network)")
    parser.add_argument("--precision", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                        help="run each precision and compare its top-1 with fp32's")
    parser.add_argument("--timesteps", type=int, default=None, help="T of every network (default: per network)")
    parser.add_argument("--json", default=None, help="write {network: {precision: result}} to this file")
    args = parser.parse_args(argv)
    device = devices.resolve(args.device, name="--device")
    torch.set_num_threads(args.threads)
    global CLOCK, SYNC
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if device.type == "cuda":
        SYNC = torch.cuda.synchronize
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    print(f"clock: {args.clock}; torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"{gpu}, {platform.python_version()}")
    runs = {"shallow": ("shallow CIFAR net", lambda: presets.pshallow_cifar(beta=0.8, lam=0.1, alpha=0.01), 128, 10),
            "vgg16": ("PVGG16", lambda: presets.pvgg16(beta=0.8, lam=0.1, alpha=0.01), 2, 3),
            "effnetb0": ("PEfficientNetB0", lambda: presets.pefficientnet_b0(backend="torchvision"), 8, 3)}
    results = {}
    for key in args.which:
        name, build, batch, timesteps = runs[key]
        if device.type == "cuda" and key != "shallow":
            batch = 64
        results[name] = bench(name, build, batch=args.batch or batch, timesteps=args.timesteps or timesteps,
                              device=device, amp=args.amp, precisions=args.precision, profile=args.profile,
                              repeats=args.repeats if key == "shallow" else max(1, args.repeats // 2))
    if args.json:
        import json
        import pathlib
        pathlib.Path(args.json).write_text(json.dumps({"device": gpu, "results": results}, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
