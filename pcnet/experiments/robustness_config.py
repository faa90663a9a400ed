"""Chapter 6's study plan: its parameters (:class:`Config`, with the presets of the first study, of chapter 4's tuned
values and of the shared, converged suite) and its jobs, most important first. Pure data: nothing runs here;
:mod:`pcnet.experiments.robustness_study` computes the jobs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from . import attacks, data, weights

TUNED_SOURCE = data.DATA_DIR / "results" / "ch4_tuned_hparams.json"  # written by pcnet.experiments.dynamics_runs
STUDY_VERSION = 1  # bump when a change alters what a job computes (chunk keys include it)


@dataclasses.dataclass(frozen=True)
class Config:
    """The study's parameters (defaults: the full study; :meth:`smoke` shrinks them)."""
    per_class: int = 20                       # images per class (x 10 classes), class-stratified test subset
    subset_seed: int = 2
    decoder_seed: int = 0
    backbone_seed: int = 0                    # which of the three independently trained backbones (and its decoders)
    timesteps: int = 6
    beta: float = 0.8
    lam: float = 0.1
    alpha: float = 0.01
    eps_sweep: tuple = (0.01, 0.02, 0.04, 0.08)  # L-inf, [0, 1] pixel units
    eps_main: float = 0.02
    steps: int = 100                          # APGD: strong budget (steps, restarts)
    restarts: int = 3
    weak_steps: int = 50                      # APGD: weak budget, main epsilon only (convergence)
    weak_restarts: int = 1
    queries: int = 1000                       # Square: every epsilon / weak budget at the main epsilon (0: no Square)
    queries_main: int = 5000                  # Square: strong budget at the main epsilon (0: no Square)
    last_k: int = 2                           # BPDA last-k
    controls: tuple = ("zero", "shuffled", "mean", "rescale")
    bpda: tuple = ("bpda-feedforward", "bpda-last-k", "bpda-detached-error")
    autoattack: bool = True
    attack_seed: int = 0
    block: int = 50                           # images per job (the batch: shuffled/mean feedback mix within it)
    suite: bool = False                       # every model faces the same attacks at two budgets (Config.suite)
    exclude_seed: int | None = None           # fresh images: none of stratified_subset(per_class, exclude_seed)

    @classmethod
    def smoke(cls) -> "Config":
        return cls(per_class=1, timesteps=2, eps_sweep=(0.02, 0.08), steps=4, restarts=2, weak_steps=2,
                   queries=10, queries_main=20, last_k=1, block=5, autoattack=False)

    @classmethod
    def tuned(cls, *, smoke: bool = False, source=TUNED_SOURCE) -> "Config":
        """Chapter 4's tuned (beta, lam, alpha) at the T they were selected with, attacked at the main eps only:
        APGD-CE and APGD-DLR at both budgets, Square at half and at the whole of the sweep's query budget, the
        BPDA variants and every control; no AutoAttack (cost)."""
        record = weights.load_json_result(source)
        values, T = record["recommended"], record["grid_search"]["timesteps"]
        base = cls.smoke() if smoke else cls()
        return dataclasses.replace(base, beta=values["beta"], lam=values["lam"], alpha=values["alpha"],
                                   timesteps=2 if smoke else T, eps_sweep=(base.eps_main,), queries=base.queries // 2,
                                   queries_main=base.queries, controls=("rescale", "zero", "mean", "shuffled"),
                                   autoattack=False)

    @classmethod
    def suite_of(cls, *, backbone_seed: int = 0, values: str = "paper", smoke: bool = False,
                 source=TUNED_SOURCE) -> "Config":
        """Issue 19's shared, converged suite on one backbone, at the main eps, T = 10 (chapters 4-5's horizon):
        every model -- t = 0, the dynamics and each control -- faces APGD-CE and APGD-DLR 100 x 3, Square 5,000
        queries and AutoAttack (standard), and again at double budgets (200 x 3, 10,000 queries) for the
        convergence check; the iterative ones (dynamics, zero, shuffled, mean) also face the three BPDA variants at
        both budgets. Images: 20 per class drawn fresh, disjoint from the 200 the first study was designed on."""
        if values not in ("paper", "tuned"):
            raise ValueError(f"values must be 'paper' or 'tuned', got {values!r}")
        base = cls.smoke() if smoke else cls()
        hp = {"beta": base.beta, "lam": base.lam, "alpha": base.alpha}
        if values == "tuned":
            hp = {k: weights.load_json_result(source)["recommended"][k] for k in hp}
        bpda = tuple(f"{b}@{c}" if c else b for c in ("", "zero", "shuffled", "mean")
                     for b in ("bpda-feedforward", "bpda-last-k", "bpda-detached-error"))
        steps, queries = (base.weak_steps, base.queries) if smoke else (100, 5000)
        return dataclasses.replace(base, **hp, backbone_seed=backbone_seed, timesteps=2 if smoke else 10,
                                   eps_sweep=(base.eps_main,), subset_seed=3, exclude_seed=base.subset_seed,
                                   steps=2 * steps, restarts=base.restarts, weak_steps=steps,
                                   weak_restarts=base.restarts, queries=queries, queries_main=2 * queries,
                                   controls=("zero", "shuffled", "mean", "rescale"), bpda=bpda,
                                   autoattack=not smoke, suite=True)

    def __post_init__(self):
        if self.eps_main not in self.eps_sweep:
            raise ValueError(f"eps_main={self.eps_main} must be one of eps_sweep={self.eps_sweep}")
        if not (self.steps >= self.weak_steps and self.restarts >= self.weak_restarts
                and self.queries_main >= self.queries and (self.queries > 0) == (self.queries_main > 0)):
            raise ValueError("the strong budget (steps, restarts, queries_main) must not be below the weak one "
                             "(weak_steps, weak_restarts, queries); queries and queries_main are both 0 (no Square) "
                             "or both positive")
        bad = {m for m in self.controls + self.bpda if not attacks.is_model(m)}
        if bad:
            raise ValueError(f"unknown models {sorted(bad)} in controls/bpda; choose from {attacks.MODELS} or bpda-<gradient>@<zero|shuffled|mean>")

    def digest(self) -> str:
        """A short hash of the parameters (names the chunk folder, so changed parameters never mix)."""
        return hashlib.sha256(json.dumps({**dataclasses.asdict(self), "version": STUDY_VERSION}, sort_keys=True).encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Job:
    """One attack at one budget (steps or queries, restarts) on one model, epsilon and image block."""
    model: str
    attack: str
    eps: float
    budget: int
    restarts: int
    block: int

    @property
    def run(self) -> str:
        """The key of the run (all blocks): model/attack/eps/budget."""
        return f"{self.model}/{self.attack}/eps={self.eps:g}/{self.budget}x{self.restarts}"

    @property
    def key(self) -> str:
        return self.run.replace("/", "_").replace("=", "") + f"_b{self.block}"


def _suite_runs(c: Config) -> list[tuple]:
    """The shared suite: every model at the suite's budget first (AutoAttack last), then the doubled budgets."""
    models = ("t0", "dynamics") + c.controls
    runs = []
    for steps, queries in ((c.weak_steps, c.queries), (c.steps, c.queries_main)):
        for m in models:
            runs += [(m, "apgd-ce", c.eps_main, steps, c.restarts), (m, "apgd-dlr", c.eps_main, steps, c.restarts)]
        runs += [(m, "apgd-ce", c.eps_main, steps, c.restarts) for m in c.bpda]
        runs += [(m, "square", c.eps_main, queries, 1) for m in models] if queries else []
    return runs + ([(m, "autoattack", c.eps_main, 0, 1) for m in models] if c.autoattack else [])


def _runs(c: Config) -> list[tuple]:
    """(model, attack, eps, budget, restarts) in order of importance (no Square where queries is 0)."""
    if c.suite:
        return _suite_runs(c)
    strong = lambda m, e, q: [(m, "apgd-ce", e, c.steps, c.restarts), (m, "apgd-dlr", e, c.steps, c.restarts)] + (
        [(m, "square", e, q, 1)] if q else [])
    main = strong("t0", c.eps_main, c.queries_main) + strong("dynamics", c.eps_main, c.queries_main)
    runs = sorted(main, key=lambda r: r[1] == "square")  # the gradient attacks first (stable sort)
    for m in ("t0", "dynamics"):  # convergence: the weak budget
        runs += [(m, "apgd-ce", c.eps_main, c.weak_steps, c.weak_restarts),
                 (m, "apgd-dlr", c.eps_main, c.weak_steps, c.weak_restarts)]
        runs += [(m, "square", c.eps_main, c.queries, 1)] if c.queries else []
    for e in (e for e in c.eps_sweep if e != c.eps_main):
        runs += strong("t0", e, c.queries) + strong("dynamics", e, c.queries)
    for m in c.controls:
        runs += [(m, "apgd-ce", c.eps_main, c.steps, c.restarts), (m, "apgd-dlr", c.eps_main, c.steps, c.restarts)]
    runs += [(m, "apgd-ce", c.eps_main, c.steps, 1) for m in c.bpda]
    if c.autoattack:
        runs += [(m, "autoattack", c.eps_main, 0, 1) for m in ("t0", "dynamics")]
    return runs


def jobs(config: Config, n_images: int) -> list[Job]:
    """Every job of the study, most important first."""
    blocks = range((n_images + config.block - 1) // config.block)
    return [Job(*run, block=b) for run in _runs(config) for b in blocks]
