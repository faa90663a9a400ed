"""Benchmark: what chapter 6's shared, converged attack suite costs on one backbone, projected from measured steps.

    python scripts/bench_suite.py [--threads 1] [--repeats 3] [--out data/results/ch6_suite_cost.json]
    python scripts/bench_suite.py --device cuda --out OUT        # on a GPU (synchronised timings)

For every model the suite attacks (``robustness_config.Config.suite_of``: t = 0, the dynamics, the four controls
and the BPDA variants, T = 10), on one block of the suite's images, it times one *gradient step* (forward and
backward of the cross-entropy, what an APGD iteration costs) and one *forward* (what a Square query costs), the
median of ``--repeats`` (process CPU time on the CPU, synchronised wall time on a GPU). Each run of the suite is
then priced as an upper bound that assumes every image stays robust (the attacks stop early on fooled images, so
the real cost is lower):

* APGD-CE / APGD-DLR, ``steps x restarts``: that many gradient steps per block;
* Square, ``queries``: that many forwards per block;
* AutoAttack "standard" (torchattacks: APGD-CE 100 x 1, APGD-T 100 steps x 9 target classes, FAB-T 100 steps x 9
  target classes, Square 5,000 queries): 1,900 gradient steps (a FAB step counted as one) + 5,000 forwards per block.

The total is per backbone and value set; the suite needs it three times (backbones 0-2).
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

import torch

from pcnet.experiments import attacks, devices, weights
from pcnet.experiments import robustness_config as RC
from pcnet.experiments import robustness_study as RS

AUTOATTACK_STEPS = 100 + 9 * 100 + 9 * 100  # APGD-CE, APGD-T (9 targets), FAB-T (9 targets)
AUTOATTACK_QUERIES = 5000                  # its Square


def _timer(device):
    if str(device).startswith("cuda"):
        def now():
            torch.cuda.synchronize()
            return time.perf_counter()
        return now
    return time.process_time


def time_model(model, x, y, *, repeats: int, now) -> tuple[float, float]:
    """(seconds per gradient step, seconds per forward) of ``model`` on the block ``x`` (B, C, H, W)."""
    def step():
        xx = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xx), y)
        torch.autograd.grad(loss, xx)

    def forward():
        with torch.no_grad():
            model(x)

    out = []
    for fn in (step, forward):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = now()
            fn()
            times.append(now() - start)
        out.append(statistics.median(times))
    return out[0], out[1]


def run_cost(run: tuple, step_s: float, forward_s: float) -> float:
    """Upper-bound seconds of one run (model, attack, eps, budget, restarts) on one block."""
    _, attack, _, budget, restarts = run
    if attack in ("apgd-ce", "apgd-dlr"):
        return budget * restarts * step_s
    if attack == "square":
        return budget * restarts * forward_s
    if attack == "autoattack":
        return AUTOATTACK_STEPS * step_s + AUTOATTACK_QUERIES * forward_s
    raise ValueError(f"no cost model for attack {attack!r}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone-seed", type=int, default=0, choices=(0, 1, 2))
    p.add_argument("--values", default="paper", choices=("paper", "tuned"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the measurements and the projection here, with provenance "
                   "(chapter 6 reads data/results/ch6_suite_cost.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = devices.resolve(args.device)
    config = RC.Config.suite_of(backbone_seed=args.backbone_seed, values=args.values)
    runs = RC._runs(config)
    net = RS.network(config, device=device)
    _, x, y = RS.images(config)
    blocks = -(-len(y) // config.block)
    x, y = x[:config.block].to(device), y[:config.block].to(device)  # (B, 1, 28, 28), (B,)
    now, timing = _timer(device), {}
    for name in dict.fromkeys(r[0] for r in runs):
        model = attacks.attacked_model(net, name, timesteps=config.timesteps, last_k=config.last_k)
        timing[name] = time_model(model, x, y, repeats=args.repeats, now=now)
        print(f"{name:28s} gradient step {timing[name][0]:7.3f} s   forward {timing[name][1]:7.3f} s   "
              f"({len(y)} images)", flush=True)
    by_attack, by_model = collections.Counter(), collections.Counter()
    for run in runs:
        cost = blocks * run_cost(run, *timing[run[0]])
        by_attack[run[1]] += cost
        by_model[run[0]] += cost
    total = sum(by_attack.values())
    clock = "GPU wall" if str(device).startswith("cuda") else "CPU"
    print(f"\n{len(runs)} runs x {blocks} blocks of {config.block} images (T = {config.timesteps}); upper bound "
          f"per backbone and value set: {total:,.0f} {clock}-s ({total / 3600:.1f} h)")
    for attack, cost in by_attack.most_common():
        print(f"  {attack:12s} {cost:12,.0f} s  ({100 * cost / total:.0f} %)")
    result = {"device": str(device), "threads": args.threads, "clock": clock, "block": config.block,
              "blocks": blocks, "timesteps": config.timesteps, "config_digest": config.digest(),
              "seconds_per_block": {k: {"gradient_step": v[0], "forward": v[1]} for k, v in timing.items()},
              "by_attack": dict(by_attack), "by_model": dict(by_model), "total_s": total,
              "load_average": list(os.getloadavg())}  # other work on the machine while it measured
    if args.out:
        command = "python scripts/bench_suite.py " + " ".join(argv if argv is not None else sys.argv[1:])
        weights.save_json_result(args.out, result, command=command.strip(), seed=None)
    return result


if __name__ == "__main__":
    main()
