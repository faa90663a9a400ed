"""Tuning that can be trusted: (beta, lam, alpha) selected on 2,000 validation images, judged on the test set.

Chapter 4's first tuning (:mod:`pcnet.experiments.dynamics_runs`, kept as it is: chapters 5 and 6 use its values)
scored a 4 x 4 x 4 grid on 500 validation images and picked a corner of it. This study, on the same network
(backbone 0, decoders of seed 0, T = 10, Gaussian noise sigma = 0.1):

1. **Selection** on ``n_val`` validation images (the 5,000 held-out training images, disjoint from the test
   split) under one noise draw of its own seed: every (beta, lam, alpha) of the grid is scored by its noisy
   accuracy at t = T. Each axis is widened (beta, lam by ``step`` within their declared limits, alpha by decades)
   while the best point sits on that axis's grid edge (:func:`dynamics_study.on_edge`), until the optimum is
   interior, an axis reaches its declared limit, or the grid would pass ``max_points``. beta + lam <= 1 (the
   memory weight 1 - beta - lam >= 0) bounds the parameter space itself: an optimum on beta + lam = 1 is reported as
   such. The best score is selection-biased (those images picked it); the runner-up gap comes with its paired SE.
   Clean validation accuracy is recorded for every (beta, lam) at the chosen alpha.
2. **Judgement** on the whole test split, clean and under one noise draw of another seed: the tuned dynamics at
   t = T against the backbone (t = 0), the fixed-point rescale at the tuned values, BN adaptation and TENT (batches of
   ``adapt_batch`` randomly composed images); the verdicts and the dominance are in
   :mod:`pcnet.experiments.tuning_report`.

Every grid point and every test method is one content-keyed chunk (:mod:`pcnet.experiments.chunks`)::

    nice -n 2 python -m pcnet.experiments.tuning_study --threads 1     # -> data/results/ch4_tuning.json
    python -m pcnet.experiments.tuning_study --smoke --out /tmp/tuning.json
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable

import torch

from . import chunks, dynamics_study as study
from .data import DATA_DIR

RESULT_PATH = DATA_DIR / "results" / "ch4_tuning.json"
CHUNK_DIR = DATA_DIR / "chunks" / "ch4_tuning"
COMMAND = "nice -n 2 python -m pcnet.experiments.tuning_study --threads 1"
AXES = ("beta", "lam", "alpha")
METHODS = ("dynamics", "rescale", "BN adaptation", "TENT")  # test chunks; "dynamics" also gives the backbone (t=0)
EARLIER = {"beta": 0.4, "lam": 0.4, "alpha": 1.0}  # chapter 4's 500-image selection, used by chapters 5 and 6


@dataclasses.dataclass(frozen=True)
class Config:
    """The study: selection grid and limits, image counts, noise seeds (validation and test draws differ)."""
    n_val: int = 2000
    n_test: int = 10_000
    timesteps: int = 10
    batch_size: int = 500
    adapt_batch: int = 100
    sigma: float = 0.1
    val_noise_seed: int = 11
    test_noise_seed: int = 10
    backbone: int = 0
    grid_beta: tuple = (0.2, 0.3, 0.4, 0.5)
    grid_lam: tuple = (0.3, 0.4, 0.5)
    grid_alpha: tuple = (0.1, 1.0, 10.0)
    step: float = 0.1  # beta and lam widen by this; alpha by a decade
    beta_limits: tuple = (0.1, 1.0)
    lam_limits: tuple = (0.0, 0.9)
    alpha_limits: tuple = (1e-3, 1e3)
    max_points: int = 120


SMOKE = Config(n_val=40, n_test=60, timesteps=2, batch_size=20, adapt_batch=20, grid_beta=(0.3, 0.4),
               grid_lam=(0.3, 0.4), grid_alpha=(1.0,), beta_limits=(0.2, 0.5), lam_limits=(0.2, 0.5),
               alpha_limits=(1.0, 1.0), max_points=9)


# --------------------------------------------------------------------------- widening the grid
def _beyond(values: list, edge: str | None, *, key: str, cfg: Config) -> float | None:
    """The next value past the grid's ``edge`` on axis ``key``, or None (interior, or the declared limit)."""
    if edge is None:
        return None
    lo, hi = getattr(cfg, f"{key}_limits")
    if key == "alpha":
        new = values[0] / 10 if edge == "low" else values[-1] * 10
    else:
        new = values[0] - cfg.step if edge == "low" else values[-1] + cfg.step
    new = round(new, 10)
    return new if lo - 1e-12 <= new <= hi + 1e-12 else None


def widen(score: Callable[[dict], dict], cfg: Config) -> dict:
    """Score the grid (``score(point) -> {"score": ..., ...}``), widening each axis while the best point is on its
    edge; returns {"rows", "axes", "edges", "stopped"} (``edges``: on_edge of the final grid, per axis;
    ``stopped``: why widening ended)."""
    axes = {"beta": sorted(cfg.grid_beta), "lam": sorted(cfg.grid_lam), "alpha": sorted(cfg.grid_alpha)}
    rows: dict[tuple, dict] = {}
    while True:
        for p in study.grid_points(**axes):
            key = tuple(p[k] for k in AXES)
            if key not in rows:
                rows[key] = {**p, **score(p)}
        edges = {k: study.on_edge(list(rows.values()), k) for k in AXES}
        grown = {k: sorted(axes[k] + [new]) for k in AXES
                 if (new := _beyond(axes[k], edges[k], key=k, cfg=cfg)) is not None}
        if not grown:
            stopped = "interior" if not any(edges.values()) else "declared limit"
            break
        trial = {**axes, **grown}
        if len(study.grid_points(**trial)) > cfg.max_points:
            stopped = f"max_points ({cfg.max_points})"
            break
        axes = trial
    return {"rows": list(rows.values()), "axes": axes, "edges": edges, "stopped": stopped}


def on_constraint(point: dict) -> bool:
    """Whether beta + lam = 1 (the memory weight 1 - beta - lam is 0): a boundary of the parameter space."""
    return abs(point["beta"] + point["lam"] - 1) < 1e-9


# --------------------------------------------------------------------------- images and networks
def _val(cfg: Config, noisy: bool):
    from . import dynamics_runs as runs

    cond = ("gaussian", cfg.sigma) if noisy else ("clean", 0.0)
    return runs._noisy("val", cfg.n_val, cond, cfg.val_noise_seed if noisy else 0)


def _test(cfg: Config, noisy: bool):
    from . import dynamics_runs as runs

    cond = ("gaussian", cfg.sigma) if noisy else ("clean", 0.0)
    return runs._noisy("test", cfg.n_test, cond, cfg.test_noise_seed if noisy else 0)


def _net(cfg: Config, values: dict):
    from . import dynamics_runs as runs

    return runs._net(dict(values), backbone_seed=cfg.backbone)


# --------------------------------------------------------------------------- chunk bodies
def _point(cfg: Config, point: dict, *, noisy: bool) -> dict:
    """Validation accuracy at t=0 and t=T of one grid point, with the per-image outcome at t=T (packed)."""
    net = _net(cfg, EARLIER)
    with study.evaluate.hparams_set(net, **point):
        try:
            correct = study.correct_under(net, _val(cfg, noisy), control="prediction", timesteps=cfg.timesteps,
                                          batch_size=cfg.batch_size)  # (T+1, n)
        except FloatingPointError:
            return {"t0": None, "score": 0.0, "diverged": True, "T": None}
    acc = correct.float().mean(1)  # (T+1,)
    return {"t0": float(acc[0]), "score": float(acc[-1]), "diverged": False, "T": study.pack(correct[-1])}


def _method(cfg: Config, tuned: dict, method: str, *, noisy: bool) -> dict:
    """Per-image test correctness of one method (packed); "dynamics" gives t=0 (the backbone) and t=T."""
    import pcnet
    from pcnet.dynamics import fixed_point_scale

    net, images = _net(cfg, tuned), _test(cfg, noisy)
    if method == "dynamics":
        correct = study.correct_under(net, images, control="prediction", timesteps=cfg.timesteps,
                                      batch_size=cfg.batch_size)  # (T+1, n)
        return {"t0": study.pack(correct[0]), "T": study.pack(correct[-1])}
    if method == "rescale":
        hp = {k: t.tolist() for k, t in net.hparams().items()}
        scale = [fixed_point_scale(beta=b, lam=lam) for b, lam in zip(hp["beta"], hp["lam"])]
        correct = study.evaluate.correct_of(lambda x: pcnet.rescaled_forward(net, x, scale=scale), images,
                                            batch_size=cfg.batch_size, progress=False)  # (n,)
        return {"T": study.pack(correct), "scale": scale}
    correct = study.adapted_correct(net.backbone, images, method="bn" if method == "BN adaptation" else "tent",
                                    batch_size=cfg.adapt_batch)  # (n,)
    return {"T": study.pack(correct)}


# --------------------------------------------------------------------------- the study
def compute(cfg: Config, *, cache=CHUNK_DIR, progress: bool = True) -> dict:
    """Run (or resume) every chunk: the widened validation grid, the clean slice at the chosen alpha, the test
    methods at the chosen point; returns the assembled result."""
    from tqdm.auto import tqdm

    from .weights import git_revision

    st = chunks.ChunkStore(cache, study="ch4_tuning", config=dataclasses.asdict(cfg), command=COMMAND,
                           name_of=_name)
    revision, inputs = git_revision(), chunks.reference_inputs(backbone_seed=cfg.backbone, splits=("train", "test"))
    bar = tqdm(desc="tuning chunks", disable=not progress)
    records: list[dict] = []

    def run(job, thunk):
        st.run(job, inputs, thunk, git=revision)
        records.append(st.record(job, inputs))
        bar.update()
        return records[-1]["result"]

    def noisy_point(p):
        return run({"set": "val", "noisy": True, **p}, lambda: _point(cfg, p, noisy=True))

    grid = widen(noisy_point, cfg)
    best = study.best_point(grid["rows"])
    tuned = {k: best[k] for k in AXES}
    clean = [{**p, **run({"set": "val", "noisy": False, **p}, lambda p=p: _point(cfg, p, noisy=False))}
             for p in study.grid_points(beta=grid["axes"]["beta"], lam=grid["axes"]["lam"], alpha=[tuned["alpha"]])]
    test = {("noisy" if noisy else "clean"): {
        m: run({"set": "test", "noisy": noisy, "method": m, "tuned": tuned},
               lambda m=m, noisy=noisy: _method(cfg, tuned, m, noisy=noisy)) for m in METHODS}
        for noisy in (False, True)}
    bar.close()
    return {"config": dataclasses.asdict(cfg), "tuned": tuned, "earlier": EARLIER, "grid": grid,
            "clean_slice": clean, "test": test, "inputs": inputs,
            "chunks": [{"job": r["job"], "cpu_s": r["cpu_s"], "wall_s": r["wall_s"], "git": r["git"]}
                       for r in records],
            "cpu_seconds": round(sum(r["cpu_s"] or 0 for r in records), 1)}


def _name(job: dict) -> str:
    if job["set"] == "test":
        return f"test_{'noisy' if job['noisy'] else 'clean'}_{job['method'].replace(' ', '-')}"
    return f"val_{'noisy' if job['noisy'] else 'clean'}_b{job['beta']:g}_l{job['lam']:g}_a{job['alpha']:g}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pcnet.experiments.tuning_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny configuration (seconds); needs --out")
    parser.add_argument("--out", default=None, help=f"result file (default: {RESULT_PATH})")
    parser.add_argument("--cache", default=None, help=f"chunk folder (default: {CHUNK_DIR}; with --smoke: beside --out)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.smoke and args.out is None:
        parser.error("--smoke writes a tiny study: give it a scratch file with --out")
    out = args.out or str(RESULT_PATH)
    try:
        chunks.check_output(out, kind="file", committed=not args.smoke)
        cache = chunks.chunk_folder(args.cache, default=CHUNK_DIR, committed=not args.smoke, out=out)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    cfg = SMOKE if args.smoke else Config()
    result = compute(cfg, cache=cache)
    from . import tuning_report
    from .weights import save_json_result

    command = " ".join(["python -m pcnet.experiments.tuning_study"] + (argv if argv is not None else sys.argv[1:]))
    sha = save_json_result(out, result, command=command, seed=cfg.val_noise_seed,
                           extra={"test_noise_seed": cfg.test_noise_seed, "threads": torch.get_num_threads()})
    print(f"wrote {out} (sha256 {sha[:12]}); {result['cpu_seconds']} CPU-s in chunks")
    for line in tuning_report.findings(result):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
