"""Replication: a claim is stated for every backbone, under a rule declared before the numbers (CLI + report).

**The rule** (:data:`RULE`, printed by the chapters before any number): a headline contrast is judged on each of the
three independently trained backbones (each with its own decoders); the verdicts of one claim's backbones, and of
all contrasts shown with it, form one Holm family. The claim **replicates** when it is significant in the same
direction on every backbone after Holm; it **does not replicate** when a backbone shows the opposite effect or no
backbone shows it; otherwise it is **backbone-dependent** (significant on some backbones, no detectable effect on
others). Every backbone's estimate, interval and MDE is printed beside the verdict, whatever it says.

**Noise draws** (chapter 4): a Gaussian-noise contrast is measured over ``draws`` independent noise draws on the
same images. Per image, the outcome is averaged over the draws, and the contrast is the mean of the per-image
differences with a Student-t interval over images (:func:`draws_verdict`): images are the clusters, so the
interval carries both the image and the noise-draw variance. Each draw is also reported on its own (exact McNemar).

The chapter-4 study: every backbone x draw x method (the dynamics at t = 0 and t = T, the zero, shuffled and mean
feedback controls and the rescale control) at the paper values, sigma = 0.1, T = 10, on the whole test split, one
content-keyed chunk each (:mod:`pcnet.experiments.chunks`; about 60 CPU-s per chunk on one core)::

    nice -n 10 python -m pcnet.experiments.replication             # -> data/results/ch4_replication.json
    python -m pcnet.experiments.replication --smoke --out /tmp/rep.json
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence

import torch

from .optional import require
from . import chunks, dynamics_study as study
from .data import DATA_DIR
from .verdicts import Verdict, holm_family, paired_proportions

RULE = ("Declared rule: each claim is tested on backbones 0, 1 and 2 (each with its own decoders), all of its "
        "verdicts in one Holm family. It replicates when significant in the same direction on every backbone after "
        "Holm; it does not replicate when a backbone shows the opposite effect or none shows it; otherwise it is "
        "backbone-dependent.")
RESULT_PATH = DATA_DIR / "results" / "ch4_replication.json"
CHUNK_DIR = DATA_DIR / "chunks" / "ch4_replication"
COMMAND = "nice -n 10 python -m pcnet.experiments.replication"
METHODS = ("prediction", "zero", "shuffled", "mean", "rescale")


@dataclasses.dataclass(frozen=True)
class Config:
    """The chapter-4 replication: the paper values on every backbone and noise draw."""
    n_test: int = 10_000
    timesteps: int = 10
    batch_size: int = 500
    sigma: float = 0.1
    noise_seed: int = 0
    draws: int = 3
    backbones: tuple = (0, 1, 2)
    beta: float = 0.8
    lam: float = 0.1
    alpha: float = 0.01


SMOKE = Config(n_test=40, timesteps=2, batch_size=20, draws=2, backbones=(0, 1))


# --------------------------------------------------------------------------- verdicts
def draws_verdict(a, b, *, contrast: str, alpha: float = 0.05, power: float = 0.8) -> Verdict:
    """Verdict on accuracy(a) - accuracy(b) in points over noise draws: a, b are (draws, n) per-image correctness
    on the same images. The per-image mean over draws is the unit (paired Student-t over images; MDE from its SD)."""
    student_t = require("scipy.stats", purpose="replication.draws_verdict").t

    from .stats import mde_paired

    a, b = (torch.as_tensor(v, dtype=torch.float64) for v in (a, b))
    if a.shape != b.shape or a.dim() != 2 or a.shape[1] < 2:
        raise ValueError(f"a and b must both be (draws, n >= 2) per-image outcomes, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    d = 100 * (a.mean(0) - b.mean(0))  # (n,) points
    n, est, sd = d.numel(), float(d.mean()), float(d.std())
    if sd == 0:  # every image's difference equal: no spread to test (say so rather than divide by 0)
        return Verdict(contrast, n, est, est, est, float("nan"), f"paired t over {a.shape[0]} draws", 1.0 if est == 0
                       else 0.0, alpha=alpha)
    half = float(student_t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n)
    p = float(2 * student_t.sf(abs(est) / (sd / math.sqrt(n)), n - 1))
    return Verdict(contrast, n, est, est - half, est + half, mde_paired(n, sd=sd, alpha=alpha, power=power),
                   f"paired t over {a.shape[0]} draws", p, alpha=alpha)


def claim_status(verdicts: Sequence[Verdict], backbones: Sequence[int] | None = None) -> str:
    """The claim's status under :data:`RULE` from its per-backbone verdicts (Holm already applied), e.g.
    "replicates: a gain on backbones 0, 1, 2" or "backbone-dependent: a gain on backbone 0; no detectable effect
    on backbones 1, 2"."""
    if not verdicts:
        raise ValueError("claim_status: no verdicts")
    backbones = list(range(len(verdicts))) if backbones is None else list(backbones)
    groups: dict[str, list[str]] = {}
    for b, v in zip(backbones, verdicts):
        groups.setdefault(v.effect, []).append(str(b))
    said = "; ".join(f"{'no detectable effect' if e == 'none' else 'a ' + e} on backbone{'s' * (len(bs) > 1)} "
                     f"{', '.join(bs)}"
                     for e, bs in groups.items())
    effects = set(groups)
    if len(effects) == 1 and effects != {"none"}:
        return f"replicates: {said}"
    if len(effects - {"none"}) > 1 or effects == {"none"}:
        return f"does not replicate: {said}"
    return f"backbone-dependent: {said}"


# --------------------------------------------------------------------------- the study
def _images(cfg: Config, draw: int):
    from . import dynamics_runs as runs

    return runs._noisy("test", cfg.n_test, ("gaussian", cfg.sigma), study.noise_seed(cfg.noise_seed, replicate=draw))


def _net(cfg: Config, backbone: int):
    from . import dynamics_runs as runs

    return runs._net({"beta": cfg.beta, "lam": cfg.lam, "alpha": cfg.alpha}, backbone_seed=backbone)


def _job(cfg: Config, backbone: int, draw: int, method: str) -> dict:
    """Per-image correctness {"t0", "T"} (packed; rescale: "T" only) of one method on one backbone and draw."""
    correct = study.correct_under(_net(cfg, backbone), _images(cfg, draw), control=method, timesteps=cfg.timesteps,
                                  batch_size=cfg.batch_size)
    if method == "rescale":
        return {"T": study.pack(correct.reshape(-1, correct.shape[-1])[-1])}
    return {"t0": study.pack(correct[0]), "T": study.pack(correct[-1])}


def compute(cfg: Config, *, cache=CHUNK_DIR, progress: bool = True, shard: tuple[int, int] = (0, 1)) -> dict | None:
    """Run (or resume) every chunk; the assembled result when all are done (None for a shard that is not the last
    to finish)."""
    from tqdm.auto import tqdm

    from .weights import git_revision

    st = chunks.ChunkStore(cache, study="ch4_replication", config=dataclasses.asdict(cfg), command=COMMAND,
                           name_of=lambda j: f"b{j['backbone']}_d{j['draw']}_{j['method']}")
    todo = [{"backbone": b, "draw": r, "method": m} for b in cfg.backbones for r in range(cfg.draws) for m in METHODS]
    revision, out = git_revision(), {}
    for k, job in enumerate(tqdm(todo, desc="replication chunks", disable=not progress)):
        inputs = chunks.reference_inputs(backbone_seed=job["backbone"])
        if k % shard[1] == shard[0]:
            out[k] = st.run(job, inputs, lambda job=job: _job(cfg, **job), git=revision)
        else:
            out[k] = st.load(job, inputs)
    if any(v is None for v in out.values()):
        return None
    records = [st.record(job, chunks.reference_inputs(backbone_seed=job["backbone"])) for job in todo]
    return {"config": dataclasses.asdict(cfg), "runs": [{**job, **r} for job, r in zip(todo, out.values())],
            "cpu_seconds": round(sum(r["cpu_s"] or 0 for r in records), 1), "rule": RULE,
            "inputs": {str(b): chunks.reference_inputs(backbone_seed=b) for b in cfg.backbones}}  # weights' sha256


def outcomes(result: dict) -> dict:
    """{(backbone, method, "t0"|"T"): bool (draws, n)} from a result."""
    n, draws = result["config"]["n_test"], result["config"]["draws"]
    out: dict = {}
    for run in result["runs"]:
        for field in ("t0", "T"):
            if field in run:
                out.setdefault((run["backbone"], run["method"], field), [None] * draws)[run["draw"]] = \
                    study.unpack(run[field], n)
    return {k: torch.stack(v) for k, v in out.items()}


def families(result: dict) -> dict[str, list[Verdict]]:
    """{claim: per-backbone verdicts} for dynamics t=T − t=0 and dynamics − each control, Holm over all of them."""
    o, backbones = outcomes(result), result["config"]["backbones"]
    contrasts = {"dynamics t=T − t=0": ("prediction", "t0")} | {
        f"dynamics − {study.CONTROL_NAMES[m]} (t=T)": (m, "T") for m in METHODS[1:]}
    flat = [draws_verdict(o[(b, "prediction", "T")], o[(b, m, f)], contrast=f"{name}, backbone {b}")
            for name, (m, f) in contrasts.items() for b in backbones]
    flat = holm_family(flat)
    k = len(backbones)
    return {name: flat[i * k:(i + 1) * k] for i, name in enumerate(contrasts)}


def per_draw(result: dict) -> list[Verdict]:
    """Each draw on its own: dynamics − zero feedback (t=T) per backbone and draw (exact McNemar; no Holm: shown
    to see how much one noise draw moves the estimate)."""
    o = outcomes(result)
    return [paired_proportions(o[(b, "prediction", "T")][r], o[(b, "zero", "T")][r],
                               contrast=f"dynamics − zero-prediction, backbone {b}, draw {r}")
            for b in result["config"]["backbones"] for r in range(result["config"]["draws"])]


def findings(result: dict) -> list[str]:
    """One line per claim: its status under the rule, then every backbone's estimate, interval and MDE."""
    lines = []
    for name, fam in families(result).items():
        backbones = result["config"]["backbones"]
        per = "; ".join(f"backbone {b}: {v._interval()} points (n = {v.n}, MDE {v.mde:.2f})"
                        for b, v in zip(backbones, fam))
        lines.append(f"{name}: {claim_status(fam, backbones)}. {per}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pcnet.experiments.replication", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny configuration (seconds); needs --out")
    parser.add_argument("--out", default=None, help=f"result file (default: {RESULT_PATH})")
    parser.add_argument("--cache", default=None, help=f"chunk folder (default: {CHUNK_DIR}; with --smoke: beside --out)")
    parser.add_argument("--shard", default="0/1", help="I/N: this worker runs chunks I mod N")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.smoke and args.out is None:
        parser.error("--smoke writes a tiny study: give it a scratch file with --out")
    out = args.out or str(RESULT_PATH)
    try:
        shard = chunks.parse_shard(args.shard)
        chunks.check_output(out, kind="file", committed=not args.smoke)
        cache = chunks.chunk_folder(args.cache, default=CHUNK_DIR, committed=not args.smoke, out=out)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    cfg = SMOKE if args.smoke else Config()
    result = compute(cfg, cache=cache, shard=shard)
    if result is None:
        print("this worker's chunks are done; others remain: rerun without --shard to assemble")
        return 0
    from .weights import save_json_result

    command = " ".join(["python -m pcnet.experiments.replication"] + (argv if argv is not None else sys.argv[1:]))
    sha = save_json_result(out, result, command=command, seed=cfg.noise_seed)
    print(f"wrote {out} (sha256 {sha[:12]}); {result['cpu_seconds']} CPU-s in chunks")
    for line in findings(result):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
