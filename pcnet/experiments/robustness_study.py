"""Chapter 6's full-strength robustness study, computed in resumable chunks (CLI).

One *job* is one attack at one budget against one model at one epsilon on one block of images; its result is
the per-image correctness on the adversarial images (and, for attacks on the backbone, the correctness of the
dynamics at t = T on the same images: a transfer attack for free). Each job's result is written atomically to
``data/cache/ch6_robustness/<config hash>/<job key>.json`` with the sha256 of its content; a rerun skips the
jobs already done. When every job is done, :func:`assemble` writes the study to ``data/results/`` with
provenance (:func:`pcnet.experiments.weights.save_json_result`)::

    nice -n 10 python -m pcnet.experiments.robustness_study            # full study (hours on 2 CPU cores)
    nice -n 10 python -m pcnet.experiments.robustness_study --tuned    # chapter 4's tuned values (main eps only)
    python -m pcnet.experiments.robustness_study --shard 0/2 & python -m pcnet.experiments.robustness_study --shard 1/2
    python -m pcnet.experiments.robustness_study --smoke --out /tmp/x.json   # tiny, seconds

Jobs run in order of importance (main epsilon first, AutoAttack last), so a partial run is useful to resume.
Nothing runs at import.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

import torch
from torch import nn

from . import attacks, chunks, corruptions, data, models, weights
from .attacks import MODELS, attacked_model  # noqa: F401 (MODELS: part of this module's interface)
from .robustness_config import STUDY_VERSION, TUNED_SOURCE, Config, Job, _runs, _suite_runs, jobs  # noqa: F401

STUDY_ATTACKS = ("apgd-ce", "apgd-dlr", "square", "autoattack")
RESULT_PATH = data.DATA_DIR / "results" / "ch6_robustness.json"
TUNED_RESULT_PATH = data.DATA_DIR / "results" / "ch6_robustness_tuned.json"
CACHE_DIR = data.DATA_DIR / "chunks" / "ch6_robustness"  # committed: a study can never be lost between sessions
COMMAND = "nice -n 10 python -m pcnet.experiments.robustness_study"


def make_study_attack(job: Job, model: nn.Module, *, seed: int):
    """The torchattacks attack of ``job`` (L-inf): APGD with (budget steps, restarts), Square with budget
    queries, or AutoAttack (version "standard")."""
    from .optional import require

    ta = require("torchattacks", purpose="chapter 6's robustness study (APGD, Square, AutoAttack)")
    if job.attack in ("apgd-ce", "apgd-dlr"):
        return ta.APGD(model, norm="Linf", eps=job.eps, steps=job.budget, n_restarts=job.restarts, seed=seed,
                       loss=job.attack[len("apgd-"):])
    if job.attack == "square":
        return ta.Square(model, norm="Linf", eps=job.eps, n_queries=job.budget, n_restarts=job.restarts, seed=seed)
    if job.attack == "autoattack":
        return ta.AutoAttack(model, norm="Linf", eps=job.eps, version="standard", n_classes=10, seed=seed)
    raise ValueError(f"unknown attack {job.attack!r}; choose one of {STUDY_ATTACKS}")


# --------------------------------------------------------------------------- one job
def images(config: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices (N,), x (N, 1, 28, 28), y (N,)): the class-stratified Fashion-MNIST test subset."""
    x_all, y_all = data.fashion_mnist(split="test").tensors
    pool = torch.arange(len(y_all))
    if config.exclude_seed is not None:  # fresh: none of the images an earlier study was designed on
        seen = corruptions.stratified_subset(y_all, per_class=config.per_class, seed=config.exclude_seed)
        pool = pool[~torch.isin(pool, seen)]
    idx = pool[corruptions.stratified_subset(y_all[pool], per_class=config.per_class, seed=config.subset_seed)]
    return idx, x_all[idx], y_all[idx]


def network(config: Config, *, device="cpu"):
    """The chapter-2 backbone with the chapter-3 decoders of ``decoder_seed`` at (beta, lam, alpha), on ``device``."""
    return models.load_reference_prednet(seed=config.decoder_seed, backbone_seed=config.backbone_seed,
                                         beta=config.beta, lam=config.lam, alpha=config.alpha).to(device)


def _device(net) -> torch.device:
    return next(net.parameters()).device


def run_job(job: Job, net, x: torch.Tensor, y: torch.Tensor, config: Config) -> dict:
    """Attack one block: {"correct": per-image correctness of the attacked model on its adversarial images,
    "transfer": (t0 only) correctness of the dynamics at t = T on them}; lists of bools."""
    x, y = x.to(_device(net)), y.to(_device(net))  # (B, C, H, W), (B,): where the network is
    model = attacked_model(net, job.model, timesteps=config.timesteps, last_k=config.last_k)
    attack = make_study_attack(job, model, seed=config.attack_seed)
    adv = attack(x, y).detach()  # (B, C, H, W)
    attacks.check_perturbation(x, adv, eps=job.eps, norm="Linf")
    with torch.no_grad():
        out = {"correct": (model(adv).argmax(-1) == y).tolist()}
        if job.model == "t0":
            out["transfer"] = (net(adv, timesteps=config.timesteps)[-1].argmax(-1) == y).tolist()
    return out


def sanity_checks(net, x: torch.Tensor, y: torch.Tensor, *, timesteps: int, large_eps: float = 0.5,
                  steps: int = 10, seed: int = 0) -> dict:
    """Determinism (two evaluations agree bit for bit, so no EOT is needed; raises otherwise) and the large-eps
    check: APGD-CE at ``large_eps`` (0.5 lets every image be turned mid-gray) must leave accuracy near 0."""
    model = attacked_model(net, "dynamics", timesteps=timesteps)
    attacks.assert_deterministic(model, x.to(_device(net)))
    job = Job("dynamics", "apgd-ce", large_eps, steps, 1, block=0)
    torch.manual_seed(seed)
    return {"deterministic": True, "large_eps": large_eps, "steps": steps, "n": len(x),
            "large_eps_accuracy": sum(run_job(job, net, x, y, Config(timesteps=timesteps))["correct"]) / len(x)}


# --------------------------------------------------------------------------- chunks on disk
def store(config: Config, *, cache=CACHE_DIR) -> chunks.ChunkStore:
    """The study's chunks under ``cache``, keyed by the config, the job and the files it reads (:func:`inputs`)."""
    return chunks.ChunkStore(cache, study=f"ch6_robustness/v{STUDY_VERSION}", config=dataclasses.asdict(config),
                             command=COMMAND, name_of=lambda job: Job(**job).key)


def inputs(config: Config) -> dict[str, str]:
    """sha256 of every file a job reads: the backbone and decoder weights and the Fashion-MNIST test split."""
    return chunks.reference_inputs(backbone_seed=config.backbone_seed, decoder_seed=config.decoder_seed,
                                   splits=("test",))


def save_chunk(st: chunks.ChunkStore, job: Job, digests: dict, result: dict, *, cpu_seconds: float | None = None,
               git: str | None = None) -> None:
    """Atomically write one job's result, keyed by its content (``cpu_seconds``: the job's measured CPU time;
    ``git``: the revision that computed it)."""
    st.save(dataclasses.asdict(job), digests, result, cpu_s=cpu_seconds,
            git=weights.git_revision() if git is None else git)


def load_chunk(st: chunks.ChunkStore, job: Job, digests: dict) -> dict | None:
    """A finished job's result, or None when absent; raises :class:`chunks.ChunkError` naming the file when it is
    damaged, edited, or holds another job's result."""
    return st.load(dataclasses.asdict(job), digests)


def _undone(config: Config, cache, n_images: int) -> list[tuple[int, Job]]:
    st, digests = store(config, cache=cache), inputs(config)
    return [(i, j) for i, j in enumerate(jobs(config, n_images)) if load_chunk(st, j, digests) is None]


def compute(config: Config, *, cache=CACHE_DIR, max_jobs: int | None = None, shard: tuple[int, int] = (0, 1),
            device="cpu", progress: bool = True) -> int:
    """Run the jobs not yet on disk (at most ``max_jobs``), most important first; returns how many jobs of the
    whole study remain. ``shard=(i, n)``: only jobs whose index is i mod n (n workers side by side)."""
    from tqdm.auto import tqdm
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    _, x, y = images(config)
    st, digests = store(config, cache=cache), inputs(config)
    todo = [j for k, j in _undone(config, cache, len(x)) if k % n == i][:max_jobs]
    net = network(config, device=device) if todo else None
    revision = weights.git_revision()  # the code this process imported (HEAD may move while it runs)
    for job in tqdm(todo, desc="robustness jobs", disable=not progress):
        block = slice(job.block * config.block, (job.block + 1) * config.block)
        torch.manual_seed(config.attack_seed)  # torchattacks draws its random starts from torch's global RNG
        start = time.process_time()
        result = run_job(job, net, x[block], y[block], config)
        save_chunk(st, job, digests, result, cpu_seconds=time.process_time() - start, git=revision)
    return len(_undone(config, cache, len(x)))


# --------------------------------------------------------------------------- the assembled study
def _clean(net, config: Config, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Per-image clean correctness of every model (block by block: shuffled/mean mix within a block)."""
    out, x, y = {}, x.to(_device(net)), y.to(_device(net))
    for name in ("t0", "dynamics") + config.controls:
        model = attacked_model(net, name, timesteps=config.timesteps)
        with torch.no_grad():
            out[name] = torch.cat([model(x[i:i + config.block]).argmax(-1) == y[i:i + config.block]
                                   for i in range(0, len(x), config.block)]).tolist()
    return out


def assemble(config: Config, *, cache=CACHE_DIR, device="cpu") -> dict:
    """The study as plain JSON from the finished chunks; raises (naming the command) if any job is missing."""
    idx, x, y = images(config)
    runs, missing = {}, []
    st, digests = store(config, cache=cache), inputs(config)
    for job in jobs(config, len(x)):
        result = load_chunk(st, job, digests)
        if result is None:
            missing.append(job.key)
            continue
        run = runs.setdefault(job.run, {"model": job.model, "attack": job.attack, "eps": job.eps,
                                        "budget": job.budget, "restarts": job.restarts, "blocks": []})
        run["blocks"].append((job.block, result))
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(jobs(config, len(x)))} jobs are not done (first: {missing[0]}); "
                           f"run `{COMMAND}` (it resumes)")
    for run in runs.values():
        blocks = [r for _, r in sorted(run.pop("blocks"), key=lambda b: b[0])]
        for field in blocks[0]:
            run[field] = [v for r in blocks for v in r[field]]
    return {"config": dataclasses.asdict(config), "indices": idx.tolist(), "labels": y.tolist(),
            "clean": _clean(network(config, device=device), config, x, y), "runs": runs}


def _as_config(d: dict) -> Config:
    return Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def study(config: Config, *, recompute: bool = False, path=RESULT_PATH, cache=CACHE_DIR, device="cpu") -> dict:
    """The chapter's entry point: recompute (resuming chunks under ``cache``) or load the committed study at
    ``path`` after checking its sha256 and that it was computed with ``config``."""
    if recompute:
        compute(config, cache=cache, device=device)
        return assemble(config, cache=cache, device=device)
    if not pathlib.Path(path).exists():
        raise FileNotFoundError(f"{path} does not exist: run `{COMMAND}` (resumable, hours on 2 CPU cores) or "
                                "pass recompute=True (RECOMPUTE = True in the chapter)")
    result = weights.load_json_result(path)
    if _as_config(result["config"]) != config:
        raise ValueError(f"{path} was computed with {result['config']}, not the chapter's parameters "
                         f"{dataclasses.asdict(config)}; pass recompute=True (RECOMPUTE = True) or run {COMMAND}")
    return result


def progress(config: Config, *, cache=CACHE_DIR) -> dict:
    """{run: [blocks done, blocks in all, CPU seconds of the done blocks (None where not measured)]}."""
    _, x, _ = images(config)
    out, st, digests = {}, store(config, cache=cache), inputs(config)
    for job in jobs(config, len(x)):
        entry = out.setdefault(job.run, [0, 0, 0.0])
        entry[1] += 1
        record = st.record(dataclasses.asdict(job), digests)
        if record is not None:
            cpu = record.get("cpu_s")
            entry[0] += 1
            entry[2] = None if cpu is None or entry[2] is None else entry[2] + cpu
    return out


def suite_path(backbone_seed: int, values: str) -> pathlib.Path:
    """The committed result of the shared suite on one backbone at "paper" or "tuned" values."""
    return RESULT_PATH.with_name(f"ch6_suite_backbone{backbone_seed}_{values}.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pcnet.experiments.robustness_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the tiny configuration (seconds); needs --out")
    parser.add_argument("--tuned", action="store_true",
                        help=f"attack chapter 4's tuned values (read from {TUNED_SOURCE.name}) at the main eps")
    parser.add_argument("--suite", action="store_true", help="the shared, converged suite on fresh images at T = 10 "
                        "(Config.suite_of; with --backbone-seed, and --tuned for chapter 4's tuned values)")
    parser.add_argument("--backbone-seed", type=int, default=0, choices=(0, 1, 2), help="with --suite: the backbone")
    parser.add_argument("--out", default=None, help=f"result file (default: {RESULT_PATH}, with --tuned "
                                                   f"{TUNED_RESULT_PATH}, with --suite {suite_path(0, 'paper').name} "
                                                   "for backbone 0 and the paper values)")
    parser.add_argument("--cache", default=None, help=f"chunk folder (default: {CACHE_DIR}; with --smoke: beside --out)")
    parser.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs (resume later)")
    parser.add_argument("--shard", default="0/1", help="I/N: run only jobs I mod N (N workers side by side)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    parser.add_argument("--status", action="store_true", help="print the jobs done per run and exit")
    args = parser.parse_args(argv)
    if args.smoke and args.out is None and not args.status:
        parser.error("--smoke writes a tiny study: give it a scratch file with --out (the default is the committed one)")
    torch.set_num_threads(args.threads)
    values = "tuned" if args.tuned else "paper"
    if args.suite:
        config = Config.suite_of(backbone_seed=args.backbone_seed, values=values, smoke=args.smoke)
    elif args.backbone_seed:
        parser.error("--backbone-seed needs --suite (the replicate backbones run the shared suite)")
    else:
        config = Config.tuned(smoke=args.smoke) if args.tuned else Config.smoke() if args.smoke else Config()
    default = suite_path(args.backbone_seed, values) if args.suite else TUNED_RESULT_PATH if args.tuned else RESULT_PATH
    out = args.out or str(default)
    try:  # before any compute: a bad target or a committed file for another configuration stops here
        shard = chunks.parse_shard(args.shard)
        chunks.check_output(out, kind="file", committed=not args.smoke)
        cache = chunks.chunk_folder(args.cache, default=CACHE_DIR, committed=not args.smoke, out=out)
    except ValueError as err:
        parser.error(str(err))
    if args.status:
        for run, (done, total, cpu) in progress(config, cache=cache).items():
            print(f"{run:45s} {done}/{total} blocks" + ("" if cpu is None or not done else f", {cpu:.0f} CPU-s"))
        return 0
    remaining = compute(config, cache=cache, max_jobs=args.max_jobs, shard=shard, device=args.device)
    if remaining:
        print(f"{remaining} jobs remain; rerun the same command to resume")
        return 0
    command = " ".join(["python -m pcnet.experiments.robustness_study"] + (argv if argv is not None else sys.argv[1:]))
    result = assemble(config, cache=cache, device=args.device)
    sha = weights.save_json_result(out, result, command=command, seed=config.attack_seed,
                                   extra={"config_digest": config.digest()})
    print(f"wrote {out} (sha256 {sha[:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
