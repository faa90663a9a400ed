"""Command line for chapter 4's heavy part: the dynamics and every control on the full test set, in chunks.

    python -m pcnet.experiments.dynamics_runs            # full parameters -> data/results/ch4_dynamics.json
    python -m pcnet.experiments.dynamics_runs --smoke --out DIR   # tiny run into DIR (tests); --out required

Each chunk (one network x value set x condition x control, the grid search, the baselines, ...) is written
atomically to the cache folder as JSON with the sha256 of its body, its wall and CPU seconds and the git revision;
a rerun skips finished chunks whose hash checks out. When all chunks exist the result is assembled and saved with
provenance (``weights.save_json_result``), and the tuned values go to data/results/ch4_tuned_hparams.json.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
from functools import lru_cache

import torch
from tqdm.auto import tqdm

from . import dynamics_study as study

RESULT_NAME = "ch4_dynamics.json"
TUNED_NAME = "ch4_tuned_hparams.json"


@dataclasses.dataclass(frozen=True)
class Config:
    """Every parameter of the run (the chapter's parameters cell mirrors them)."""
    n_test: int = 10_000
    n_val: int = 500
    n_sweep: int = 2000
    n_states: int = 500
    timesteps: int = 10
    batch_size: int = 500
    adapt_batch: int = 100
    gaussian: tuple = (0.1, 0.2)
    salt_pepper: tuple = (0.05,)
    main_sigma: float = 0.1
    noise_seed: int = 0
    paper: tuple = (("beta", 0.8), ("lam", 0.1), ("alpha", 0.01))
    grid_beta: tuple = (0.4, 0.6, 0.8, 1.0)
    grid_lam: tuple = (0.0, 0.1, 0.2, 0.4)
    grid_alpha: tuple = (0.01, 0.1, 1.0, 10.0)
    alpha_limits: tuple = (1e-4, 1e4)
    alpha_sweep: tuple = (0.0, 0.01, 0.1, 1.0, 10.0, 100.0)
    rescale_scales: tuple = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)
    backbone_seeds: tuple = (0, 1, 2)

    @property
    def conditions(self) -> list:
        return study.conditions(gaussian=self.gaussian, salt_pepper=self.salt_pepper)

    @property
    def main(self) -> tuple:
        return ("gaussian", self.main_sigma)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]


SMOKE = Config(n_test=60, n_val=40, n_sweep=30, n_states=8, timesteps=2, batch_size=20, adapt_batch=20,
               gaussian=(0.1,), grid_beta=(0.8, 1.0), grid_lam=(0.0, 0.1), grid_alpha=(0.01, 1.0),
               alpha_limits=(1e-3, 1e2), alpha_sweep=(0.0, 1.0), rescale_scales=(0.8, 1.0), backbone_seeds=(0,))


# --------------------------------------------------------------------------- shared inputs (built once per process)
@lru_cache(maxsize=None)
def _images(split: str, n: int, seed: int):
    from .data import fashion_mnist, split_train_val

    source = fashion_mnist(split="test") if split == "test" else split_train_val(
        fashion_mnist(split="train"), val_size=5000, seed=0)[1]
    return study.shuffled_subset(source, n, seed=seed)


@lru_cache(maxsize=8)
def _noisy(split: str, n: int, cond: tuple, seed: int):
    return study.noisy_images(_images(split, n, 0 if split == "test" else 1), cond, seed=seed)


def _net(values: dict, *, backbone_seed: int = 0, error_scale: str = "projective"):
    """The reference network at ``values``; loaded (and hash-checked) once per process, then reused."""
    return _loaded(tuple(sorted(values.items())), backbone_seed, error_scale)


@lru_cache(maxsize=8)
def _loaded(values: tuple, backbone_seed: int, error_scale: str):
    from .models import load_reference_prednet

    return load_reference_prednet(seed=0, backbone_seed=backbone_seed, error_scale=error_scale, **dict(values))


def _test(cfg: Config, cond, replicate: int = 0, n: int | None = None):
    images = _noisy("test", cfg.n_test, tuple(cond), study.noise_seed(cfg.noise_seed, replicate=replicate))
    return images if n is None else torch.utils.data.Subset(images, range(min(n, len(images))))


# --------------------------------------------------------------------------- chunk bodies
def _run(cfg: Config, values: dict, cond, control: str, *, backbone_seed: int = 0, error_scale="projective") -> dict:
    net = _net(values, backbone_seed=backbone_seed, error_scale=error_scale)
    correct = study.correct_under(net, _test(cfg, cond, backbone_seed), control=control, timesteps=cfg.timesteps,
                                  batch_size=cfg.batch_size)
    if control == "rescale":  # one feedforward pass, the same outcome at every t (T+1, n)
        return {"T": study.pack(correct[-1]), "accuracy": float(correct[-1].float().mean())}
    return {"t0": study.pack(correct[0]), "T": study.pack(correct[-1]), "accuracy": correct.float().mean(1).tolist()}


def _grid(cfg: Config) -> dict:
    """Validation grid under the main noise; alpha widened by decades until its optimum is interior (or a limit)."""
    net, images = _net(dict(cfg.paper)), _noisy("val", cfg.n_val, cfg.main, cfg.noise_seed + 1)
    alphas, rows = sorted(cfg.grid_alpha), []
    while True:
        done = {r["alpha"] for r in rows}
        points = study.grid_points(beta=cfg.grid_beta, lam=cfg.grid_lam, alpha=[a for a in alphas if a not in done])
        rows += study.grid_scores(net, images, points, timesteps=cfg.timesteps, batch_size=cfg.batch_size)
        edge = study.on_edge(rows, "alpha")
        if edge == "high" and alphas[-1] * 10 <= cfg.alpha_limits[1]:
            alphas.append(alphas[-1] * 10)
        elif edge == "low" and alphas[0] / 10 >= cfg.alpha_limits[0]:
            alphas.insert(0, alphas[0] / 10)
        else:
            break
    best = study.best_point(rows)
    return {"rows": rows, "best": {k: best[k] for k in ("beta", "lam", "alpha")}, "best_score": best["score"],
            "edges": {k: study.on_edge(rows, k) for k in ("beta", "lam", "alpha")}, "alphas": alphas}


def _tradeoff(cfg: Config, tuned: dict) -> dict:
    """Clean and noisy validation accuracy of the beta x lam grid (at the tuned alpha) and of the baselines;
    the per-layer rescale is tuned on a disjoint part of the validation split."""
    net = _net(dict(cfg.paper))
    clean, noisy = _noisy("val", cfg.n_val, ("clean", 0.0), 0), _noisy("val", cfg.n_val, cfg.main, cfg.noise_seed + 1)
    points = study.grid_points(beta=cfg.grid_beta, lam=cfg.grid_lam, alpha=[tuned["alpha"]])
    clean_rows = study.grid_scores(net, clean, points, timesteps=cfg.timesteps, batch_size=cfg.batch_size)
    tune_set = study.noisy_images(_images("val", 2 * cfg.n_val, 1), cfg.main, seed=cfg.noise_seed + 2)
    tune_set = torch.utils.data.TensorDataset(*(t[cfg.n_val:] for t in tune_set.tensors))
    factors, _ = study.tune_rescale(net, tune_set, scales=cfg.rescale_scales, batch_size=cfg.batch_size)
    return {"grid_clean": clean_rows, "rescale_factors": factors,
            "baselines": {name: _baselines(cfg, net, factors, {"clean": clean, "noisy": noisy}, name)
                          for name in ("backbone", "tuned rescale", "BN adaptation", "TENT")}}


def _baselines(cfg: Config, net, factors, sets: dict, name: str) -> dict:
    import pcnet

    out = {}
    for key, images in sets.items():
        if name in ("BN adaptation", "TENT"):
            correct = study.adapted_correct(net.backbone, images, method="bn" if name == "BN adaptation" else "tent",
                                            batch_size=cfg.adapt_batch)
        else:
            scale = factors if name == "tuned rescale" else [1.0] * len(factors)
            correct = study.evaluate.correct_of(lambda x: pcnet.rescaled_forward(net, x, scale=scale), images,
                                                batch_size=cfg.batch_size, progress=False)
        out[key] = float(correct.float().mean())
    return out


def _alpha_range(cfg: Config, cond) -> dict:
    """Paper beta, lam with alpha over decades, dynamics and zero control, on the first n_sweep test images."""
    net, images, out = _net(dict(cfg.paper)), _test(cfg, cond, n=cfg.n_sweep), []
    for a in cfg.alpha_sweep:
        row = {"alpha": a}
        with study.evaluate.hparams_set(net, alpha=a):
            for mode in ("prediction", "zero"):
                try:
                    res = study.evaluate.evaluate_dynamics(net, images, timesteps=cfg.timesteps, feedback=mode,
                                                           batch_size=cfg.batch_size, record=("terms",),
                                                           progress=False)
                except FloatingPointError:
                    row[mode] = None
                    continue
                row[mode] = {"t0": study.pack(res.correct[0]), "T": study.pack(res.correct[-1]),
                             "error_term": res.terms["error"].mean(0).tolist()}
        out.append(row)
    return {"rows": out, "n": len(images)}


def _states(cfg: Config, cond) -> dict:
    """Per-image correlation distance change (t=T minus t=0), trained vs untrained decoders, plus term sizes."""
    from .models import load_reference_backbone
    from .train import seeded_prednet

    clean = _test(cfg, ("clean", 0.0)).tensors[0][:cfg.n_states]
    noisy = _test(cfg, cond).tensors[0][:cfg.n_states]
    nets = {"prediction": _net(dict(cfg.paper)),
            "untrained decoders": seeded_prednet(load_reference_backbone(), seed=0, **dict(cfg.paper)).eval()}
    dist = {"prediction": study.state_distances(nets["prediction"], clean, noisy, timesteps=cfg.timesteps),
            "zero": study.state_distances(nets["prediction"], clean, noisy, timesteps=cfg.timesteps, feedback="zero"),
            "untrained decoders": study.state_distances(nets["untrained decoders"], clean, noisy,
                                                        timesteps=cfg.timesteps)}
    res = study.evaluate.evaluate_dynamics(nets["prediction"], _test(cfg, cond, n=cfg.n_states),
                                           timesteps=cfg.timesteps, batch_size=cfg.batch_size,
                                           record=("errors", "terms"), progress=False)
    return {"mean": {k: v.mean(-1).tolist() for k, v in dist.items()},  # (T+1, N)
            "change": {k: (v[-1] - v[0]).tolist() for k, v in dist.items()},  # (N, B)
            "errors": res.errors.tolist(), "terms": {k: v.tolist() for k, v in res.terms.items()}}


# --------------------------------------------------------------------------- the plan and its chunks
def _main_runs(cfg: Config, label: str, values: dict) -> list[tuple[str, object]]:
    """The main contrasts at one value set: every condition x (the dynamics and each control), backbone seed 0."""
    return [(f"run/{label}/0/{c[0]}-{c[1]:g}/{m}", lambda c=c, m=m: _run(cfg, values, c, m))
            for c in cfg.conditions for m in study.MODES + ("rescale",)]


def plan(cfg: Config, tuned: dict | None) -> list[tuple[str, object]]:
    """(key, thunk) for every chunk in order of importance; chunks that need the tuned values only once known."""
    paper, main = dict(cfg.paper), cfg.main
    chunks = [("grid", lambda: _grid(cfg))] + _main_runs(cfg, "paper", paper)
    for seed in cfg.backbone_seeds[1:]:
        for control in ("prediction", "zero"):
            chunks.append((f"run/paper/{seed}/{main[0]}-{main[1]:g}/{control}",
                           lambda s=seed, m=control: _run(cfg, paper, main, m, backbone_seed=s)))
    for cond in (("clean", 0.0), main):
        chunks.append((f"run/alpha0/0/{cond[0]}-{cond[1]:g}/prediction",
                       lambda c=cond: _run(cfg, {**paper, "alpha": 0.0}, c, "prediction")))
        chunks.append((f"run/errmean/0/{cond[0]}-{cond[1]:g}/prediction",
                       lambda c=cond: _run(cfg, paper, c, "prediction", error_scale="mean")))
    if tuned is None:
        return chunks
    chunks += _main_runs(cfg, "tuned", tuned)
    chunks.append(("tradeoff", lambda: _tradeoff(cfg, tuned)))
    chunks.append(("alpha_range", lambda: _alpha_range(cfg, main)))
    chunks.append(("states", lambda: _states(cfg, main)))
    return chunks


COMMAND = "python -m pcnet.experiments.dynamics_runs"


def _backbone_of(key: str) -> int:
    """The backbone seed a chunk runs on: run/<values>/<seed>/... ; every other chunk uses backbone 0."""
    parts = key.split("/")
    return int(parts[2]) if parts[0] == "run" and len(parts) > 2 and parts[2].isdigit() else 0


def _inputs(key: str) -> dict[str, str]:
    """sha256 of every file the chunk reads: its backbone's and decoders' weights and Fashion-MNIST."""
    from .chunks import reference_inputs

    return reference_inputs(backbone_seed=_backbone_of(key), splits=("train", "test"))


def store(cfg: Config, cache):
    """Chapter 4's chunks under ``cache``, keyed by the config, the chunk (with the tuned values it uses) and the
    files it reads (:mod:`pcnet.experiments.chunks`): a retrain or a new grid result never reuses an old chunk."""
    from .chunks import ChunkStore

    return ChunkStore(cache, study="ch4_dynamics", config=dataclasses.asdict(cfg), command=COMMAND,
                      name_of=lambda job: job["chunk"])


def _chunk(st, key: str, tuned: dict | None, thunk, *, revision: str = "") -> dict:
    """The chunk's stored record if it exists for these inputs, else compute, time and write it atomically
    (``revision``: the git revision of the code this process imported, taken when it started)."""
    job, inputs = {"chunk": key, "tuned": tuned}, _inputs(key)
    st.run(job, inputs, thunk, git=revision)
    return st.record(job, inputs)


def compute(cfg: Config, *, cache: pathlib.Path, only: str | None = None, progress: bool = True) -> dict | None:
    """Run (or resume) every chunk of ``cfg``'s plan; return the assembled result (JSON-serialisable).

    ``only``: compute just the chunks whose key starts with it (e.g. "run/paper/1", to run parts of the plan
    in parallel processes sharing ``cache``) and return None.
    """
    from .weights import git_revision

    st, revision = store(cfg, cache), git_revision()
    records: dict[str, dict] = {}
    bar = tqdm(desc="chapter 4 chunks", disable=not progress)
    for stage in (None, "tuned"):
        grid = records.get("grid") or st.record({"chunk": "grid", "tuned": None}, _inputs("grid"))
        if stage == "tuned" and grid is None:
            break  # with --only and no grid yet: the tuned values are unknown
        tuned = None if stage is None else grid["result"]["best"]
        for key, thunk in plan(cfg, tuned):
            if key not in records and (only is None or key.startswith(only)):
                bar.set_postfix_str(key)
                # in the second stage only the chunks that use the tuned values are left: they are keyed by them
                records[key] = _chunk(st, key, tuned, thunk, revision=revision)
                bar.update()
    bar.close()
    if only is not None:
        return None
    return {"config": dataclasses.asdict(cfg), "tuned": records["grid"]["result"]["best"],
            "chunks": {k: r["result"] for k, r in records.items()},
            "timing": {k: {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "git": r["git"]} for k, r in records.items()}}


def tuned_record(result: dict) -> dict:
    """What chapter 5 reads: the recommended (tuned) values first, then how they were found."""
    cfg, grid = result["config"], result["chunks"]["grid"]
    return {"recommended": {**result["tuned"], "source": f"grid search, validation split, Gaussian noise sigma="
                                                          f"{cfg['main_sigma']}, T={cfg['timesteps']}"},
            "dataset": "fashion_mnist", "backbone": "fmnist_vgg", "feedback_seed": 0,
            "paper": dict(cfg["paper"]), "grid_search": {**{k: grid[k] for k in ("best", "best_score", "edges",
                                                                                 "alphas")},
                                                         "n_val": cfg["n_val"], "timesteps": cfg["timesteps"],
                                                         "score": "validation accuracy at t=T"}}


def _json_safe(obj):
    """``obj`` with every non-finite float (an overflowed term size) replaced by None, so it is plain JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv=None) -> None:
    """CLI: compute chapter 4's full-test-set result in resumable chunks and save it with provenance."""
    import argparse
    import sys

    from .data import DATA_DIR
    from .weights import save_json_result

    parser = argparse.ArgumentParser(prog="python -m pcnet.experiments.dynamics_runs", description=main.__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny parameters (tests); results go to --out")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="results folder (default: data/results)")
    parser.add_argument("--cache", type=pathlib.Path, default=None,
                        help="chunk folder (default: data/chunks/ch4_dynamics, committed so a study is never lost; "
                        "with --smoke: beside --out)")
    parser.add_argument("--only", default=None, help="compute only chunks whose key starts with this (parallel "
                        "parts sharing --cache; a final run without --only assembles and saves)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is the most CPU-efficient)")
    args = parser.parse_args(argv)
    if args.smoke and args.out is None:
        parser.error("--smoke writes tiny results: give it a scratch folder with --out (data/results holds the "
                     "committed ones)")
    args.out = args.out or DATA_DIR / "results"
    from .chunks import check_output, chunk_folder

    try:  # before any compute: a file where the folder should be, or a committed folder for a smoke run
        check_output(args.out, kind="dir", committed=not args.smoke)
        args.cache = chunk_folder(args.cache, default=DATA_DIR / "chunks" / "ch4_dynamics", committed=not args.smoke,
                                  out=args.out / "chunks")
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    cfg = SMOKE if args.smoke else Config()
    command = "python -m pcnet.experiments.dynamics_runs " + " ".join(sys.argv[1:] if argv is None else argv)
    result = compute(cfg, cache=args.cache, only=args.only)
    if result is None:
        print(f"computed the chunks starting with {args.only!r}")
        return
    result = _json_safe(result)  # overflowed term sizes (large alpha) are stored as null
    extra = {"timing": result["timing"], "threads": torch.get_num_threads()}
    sha = save_json_result(args.out / RESULT_NAME, result, command=command.strip(), seed=cfg.noise_seed, extra=extra)
    save_json_result(args.out / TUNED_NAME, tuned_record(result), command=command.strip(), seed=cfg.noise_seed,
                     extra={"from": RESULT_NAME, "sha256": sha})
    print(f"saved {args.out / RESULT_NAME} (sha256 {sha[:12]}); tuned values {result['tuned']}")


if __name__ == "__main__":
    main()
