"""Chapter 5's test-time-adaptation baselines over several batch orders: is TENT better than BN adaptation?

BN adaptation and online TENT predict a batch from the other images of that batch (and TENT from every batch
before it), so their errors depend on the random order of the images, which chapter 5's image bootstrap does not
see: it runs one order. This study reruns both, exactly as :mod:`pcnet.experiments.corruption_study` does
(``tta.BNAdapt``, ``tta.Tent(steps, lr)``, batches of ``tta_batch`` images in ``random_order(n, seed=order)``,
reset for every corruption x severity), on chapter 5's images (``corruption_study.study_data``: the stratified
2,000 test images, 19 corruptions x 5 severities and the clean set) for batch orders 0..4; order 0 is chapter 5's
own run and reproduces its per-image results bit for bit (tested). A per-backbone ``reference`` chunk holds the
plain backbone's correctness (the prednet at t = 0, as the chapter computes it): the mCE's denominator.

**The verdict over orders** (:func:`over_orders`). Per order o, the chapter's contrast D_o = summary(TENT) -
summary(BN adaptation) (mCE or ratio of means, both linear in the per-image errors for the fixed backbone
reference). The estimate is the mean over the k orders, which equals the contrast computed on the per-image errors
averaged over the orders. Its variance has an image part and an order part: the image part is the paired BCa image
bootstrap SE of that order-averaged contrast (images resampled as in the chapter); the order part is the variance
of the k per-order contrasts over k. Their sum is the variance of the mean in a crossed images x orders design,
slightly conservative (the image x order interaction is counted in both parts). The interval and p come from a
Student t with Satterthwaite's degrees of freedom; the MDE is the effect found with 80 % power at that SE. The
two summaries form one Holm family per backbone. Each order's own image-bootstrap verdict is shown beside it
(:func:`per_order`, uncorrected: it shows how far one batch order moves the estimate).

One chunk per (backbone, order) and one reference chunk per backbone, content-keyed (:mod:`pcnet.experiments.chunks`)
in the committed ``data/chunks/ch5_tta_orders/``::

    nice -n 2 python -m pcnet.experiments.tta_orders        # backbones 0, 1, 2 -> data/results/ch5_tta_orders.json
    nice -n 2 python -m pcnet.experiments.tta_orders --backbones 1 --out /tmp/w.json  # a second worker (scratch --out)
    nice -n 2 python -m pcnet.experiments.tta_orders --orders 4 3 --out /tmp/w.json   # another split
    python -m pcnet.experiments.tta_orders --smoke --out /tmp/tta.json
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time

import torch

from . import chunks, corruptions, tta
from . import corruption_report as report
from . import corruption_study as cs
from . import verdicts as V
from .data import DATA_DIR
from .optional import require

RESULT_PATH = DATA_DIR / "results" / "ch5_tta_orders.json"
COMMITTED_BACKBONES = (0, 1, 2)  # the committed result's: 0 (the chapter's claim) and the two replicates
CHUNK_DIR = DATA_DIR / "chunks" / "ch5_tta_orders"
COMMAND = "nice -n 2 python -m pcnet.experiments.tta_orders"
METHODS = ("BN adaptation", "TENT")
CONTRAST = ("TENT", "BN adaptation")


@dataclasses.dataclass(frozen=True)
class Config:
    """The TTA baselines of chapter 5's study (its defaults) over ``orders`` batch orders on ``backbones``."""
    per_class: int = 200
    subset_seed: int = 0
    corruption_seed: int = 0
    feedback_seed: int = 0
    batch: int = 500                  # the reference's batches (eval mode: the batch does not matter)
    tta_batch: int = 128
    tent_steps: int = 1
    tent_lr: float = 1e-3
    names: tuple = corruptions.ALL
    orders: tuple = (0, 1, 2, 3, 4)
    backbones: tuple = (0,)

    def study(self, *, backbone: int, order: int) -> cs.StudyConfig:
        """Chapter 5's StudyConfig of one backbone and batch order (its TTA and data settings are these)."""
        return cs.StudyConfig(per_class=self.per_class, subset_seed=self.subset_seed, feedback_seed=self.feedback_seed,
                              corruption_seed=self.corruption_seed, backbone_seed=backbone, order_seed=order,
                              batch=self.batch, tta_batch=self.tta_batch, tent_steps=self.tent_steps,
                              tent_lr=self.tent_lr, names=tuple(self.names))


SMOKE = Config(per_class=3, tta_batch=8, names=("gaussian_noise", "fog"), orders=(0, 1, 2))


# ----------------------------------------------------------------------------- the study
def backbone_net(config: Config, backbone: int):
    """The prednet (paper values) whose ``.backbone`` chapter 5's study adapts (loaded the same way)."""
    from . import models

    return models.load_reference_prednet(seed=config.feedback_seed, backbone_seed=backbone, **cs.PAPER)


def tta_methods(backbone_model, config: Config) -> dict:
    """name -> (predict, batch, reset) of BN adaptation and online TENT, as :func:`corruption_study._predictors`."""
    bn = tta.BNAdapt(backbone_model)
    tent = tta.Tent(backbone_model, steps=config.tent_steps, lr=config.tent_lr)
    return {"BN adaptation": (bn, config.tta_batch, bn.reset), "TENT": (tent, config.tta_batch, tent.reset)}


def _run_sets(methods: dict, cset: dict, names, *, order, device=None) -> dict:
    """{"clean": {m: bool (1, n)}, "correct": {m: bool (1, C, S, n)}} of ``methods`` over every set."""
    clean = cs.evaluate_set(methods, cset["clean"], cset["labels"], order=order, device=device)  # {m: (1, n)}
    per = [cs.evaluate_corruption(methods, cset["images"][c], cset["labels"], order=order, device=device)
           for c in names]  # [{m: (1, S, n)}]
    return {"clean": clean, "correct": {m: torch.stack([p[m] for p in per], dim=1) for m in methods}}  # (1, C, S, n)


def compute_job(job: dict, config: Config, cset: dict, *, device="cpu") -> dict:
    """One chunk: the TTA baselines on one batch order, or the backbone reference (t = 0 of the prednet)."""
    cpu = time.process_time()
    net = backbone_net(config, job["backbone"]).to(device)
    n = len(cset["labels"])
    if job["part"] == "reference":  # order 0 and the study's batch, as chapter 5 computes t = 0
        methods = {"backbone": ((lambda x: net(x, timesteps=0)), config.batch, None)}  # (1, B, K)
        order = cs.random_order(n, seed=0)
    else:
        methods, order = tta_methods(net.backbone, config), cs.random_order(n, seed=job["order"])
    out = _run_sets(methods, cset, config.names, order=order, device=device)
    return {"clean": {m: cs.encode_bits(v) for m, v in out["clean"].items()},
            "correct": {m: cs.encode_bits(v) for m, v in out["correct"].items()},
            "cpu_seconds": round(time.process_time() - cpu, 1)}


def _jobs(config: Config) -> list[dict]:
    return [j for b in config.backbones
            for j in [{"backbone": b, "part": "reference"}, *({"backbone": b, "part": "tta", "order": o}
                                                              for o in config.orders)]]


def _name(job: dict) -> str:
    return f"b{job['backbone']}_" + ("reference" if job["part"] == "reference" else f"order{job['order']}")


def store(config: Config, *, chunk_dir=CHUNK_DIR) -> chunks.ChunkStore:
    """The chunks, keyed by the settings without the lists of orders and backbones (more of either reuses them)."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("orders", "backbones")}
    return chunks.ChunkStore(chunk_dir, study="ch5_tta_orders", config=fields, command=COMMAND, name_of=_name)


def compute(config: Config, *, chunk_dir=CHUNK_DIR, device="cpu", log=None, progress: bool = False) -> dict:
    """Run (or resume) every chunk and assemble the result (plain JSON)."""
    from .weights import git_revision

    st, revision = store(config, chunk_dir=chunk_dir), git_revision()
    cset = cs.study_data(config.study(backbone=0, order=0), progress=progress)
    out = []
    for job in _jobs(config):
        inputs = chunks.reference_inputs(backbone_seed=job["backbone"], decoder_seed=config.feedback_seed)
        result = st.load(job, inputs)
        if result is None:
            wall = time.perf_counter()
            result = compute_job(job, config, cset, device=device)
            path = st.save(job, inputs, result, cpu_s=result["cpu_seconds"], wall_s=time.perf_counter() - wall,
                           git=revision)
            if log:
                log(f"chunk {_name(job)}: {result['cpu_seconds']:.0f} CPU-s -> {path}")
        out.append({**job, **result, "inputs": inputs})
    return {"config": dataclasses.asdict(config), "names": list(config.names), "severities": list(cset["severities"]),
            "n": len(cset["labels"]), "indices": cset["indices"].tolist(), "labels": cset["labels"].tolist(),
            "runs": out, "cpu_seconds": round(sum(r["cpu_seconds"] for r in out), 1)}


def committed(config: Config, *, path=RESULT_PATH) -> dict:
    """The committed result at ``path`` (sha256-checked) after checking it holds ``config`` (its backbones among
    the committed ones); otherwise a clear error naming the command that computes it."""
    import json
    import pathlib

    from .weights import load_json_result

    fix = f"compute it with `{COMMAND}` (resumable, one chunk per backbone x batch order)"
    if not pathlib.Path(path).exists():
        raise FileNotFoundError(f"no committed TTA batch-order study at {path}: {fix}")
    result = load_json_result(path)
    have, want = result["config"], json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as the file's lists
    diff = {k: (have.get(k), v) for k, v in want.items() if k != "backbones" and have.get(k) != v}
    if set(want["backbones"]) - set(have["backbones"]):
        diff["backbones"] = (have["backbones"], want["backbones"])
    if diff:
        raise ValueError(f"{path} was computed with other settings (committed, wanted): {diff}; {fix}")
    return result


# ----------------------------------------------------------------------------- verdicts
def order_study(result: dict, *, backbone: int, order: int) -> dict:
    """One backbone and batch order as a chapter-5 study dict ({"correct": {method: (1, C, S, n)}}) with the
    backbone reference under ``corruption_report.BACKBONE``, for :func:`corruption_report.difference_verdict`."""
    runs = {(r["backbone"], r.get("order")): r for r in result["runs"]}
    ref, run = runs[(backbone, None)], runs[(backbone, order)]
    correct = {report.BACKBONE: cs.decode_bits(ref["correct"]["backbone"])}  # (1, C, S, n)
    correct |= {m: cs.decode_bits(run["correct"][m]) for m in METHODS}  # (1, C, S, n)
    return {"correct": correct, "names": result["names"], "severities": result["severities"]}


def per_order(result: dict, *, backbone: int = 0, summary: str, n_boot: int = 2000, seed: int = 0) -> list[V.Verdict]:
    """TENT - BN adaptation on each batch order alone, by chapter 5's image bootstrap (uncorrected)."""
    out = []
    for o in result["config"]["orders"]:
        v = report.difference_verdict(order_study(result, backbone=backbone, order=o), *CONTRAST, summary=summary,
                                      n_boot=n_boot, seed=seed)
        out.append(dataclasses.replace(v, contrast=f"{v.contrast}, batch order {o}"))
    return out


def combine(per_order_estimates, *, se_images: float, n_images: int, alpha: float = 0.05,
            power: float = 0.8) -> dict:
    """The over-orders estimate and its interval: mean of the k per-order estimates, SE^2 = se_images^2 +
    var_orders / k, Student t with Satterthwaite's df (image part n_images - 1, order part k - 1)."""
    student_t = require("scipy.stats", purpose="tta_orders.combine").t

    d = torch.as_tensor(per_order_estimates, dtype=torch.float64)  # (k,)
    k = d.numel()
    if k < 2 or n_images < 2:
        raise ValueError(f"combine needs >= 2 orders and >= 2 images, got {k} and {n_images}")
    var_img, var_ord = se_images ** 2, float(d.var()) / k
    se = math.sqrt(var_img + var_ord)
    parts = var_img ** 2 / (n_images - 1) + var_ord ** 2 / (k - 1)
    df = (var_img + var_ord) ** 2 / parts if parts > 0 else float(n_images - 1)
    est = float(d.mean())
    half = float(student_t.ppf(1 - alpha / 2, df)) * se
    p = float(2 * student_t.sf(abs(est) / se, df)) if se > 0 else float(est == 0)  # no spread: 1 at 0, else 0
    mde = (float(student_t.ppf(1 - alpha / 2, df)) + float(student_t.ppf(power, df))) * se
    return {"estimate": est, "low": est - half, "high": est + half, "se": se, "se_images": se_images,
            "sd_orders": float(d.std()), "df": df, "p": p, "mde": mde, "orders": k}


def over_orders(result: dict, *, backbone: int = 0, summary: str, n_boot: int = 2000, seed: int = 0,
                alpha: float = 0.05) -> tuple[V.Verdict, dict]:
    """TENT - BN adaptation over all batch orders (module docstring): the verdict (contrast named as chapter 5's,
    ``"<summary>: TENT - BN adaptation"``) and the numbers behind it."""
    from .stats import bootstrap

    f, orders = report.SUMMARIES[summary], result["config"]["orders"]
    studies = [order_study(result, backbone=backbone, order=o) for o in orders]
    ref = report._reference(studies[0])  # (C, n): the backbone
    errs = {m: torch.stack([report._final(s, m) for s in studies]) for m in CONTRAST}  # (k, C, n)
    per = [float(f(errs[CONTRAST[0]][i], ref) - f(errs[CONTRAST[1]][i], ref)) for i in range(len(orders))]
    mean = {m: e.mean(0) for m, e in errs.items()}  # (C, n): per-image errors averaged over the orders
    boot = bootstrap(lambda a, b, r: f(a, r) - f(b, r), *mean.values(), ref, n_boot=n_boot, seed=seed)
    c = combine(per, se_images=float(boot.se), n_images=ref.shape[-1], alpha=alpha)
    c["per_order"] = per
    v = V.Verdict(f"{summary}: {CONTRAST[0]} - {CONTRAST[1]}", ref.shape[-1], c["estimate"], c["low"], c["high"],
                  c["mde"], f"t over {c['orders']} batch orders x images (df {c['df']:.0f})", c["p"], alpha=alpha,
                  null=0.0, higher_is_better=False, unit="", digits=3)
    return v, c


def family(result: dict, *, backbone: int = 0, n_boot: int = 2000, seed: int = 0) -> dict:
    """{summary: (over-orders verdict, its numbers)} for both summaries, Holm over the two."""
    pairs = {s: over_orders(result, backbone=backbone, summary=s, n_boot=n_boot, seed=seed) for s in report.SUMMARIES}
    held = V.holm_family([v for v, _ in pairs.values()])
    return {s: (v, pairs[s][1]) for s, v in zip(pairs, held)}


def plot_verdicts(result: dict, fam: dict, *, backbone: int = 0, n_boot: int = 2000, seed: int = 0) -> list:
    """Per summary: every order's verdict, then the over-orders one (for ``plotting.family_plot``)."""
    out = []
    for s, (v, c) in fam.items():
        out += per_order(result, backbone=backbone, summary=s, n_boot=n_boot, seed=seed)
        out.append(dataclasses.replace(v, contrast=f"{v.contrast}, over {c['orders']} orders"))
    return out


def plot(result: dict, fam: dict, *, backbone: int = 0, n_boot: int = 2000, seed: int = 0):
    """One forest-plot panel per summary (:func:`plotting.forest_plot`): each order, then over all orders."""
    from . import plotting
    plt = require("matplotlib.pyplot", purpose="tta_orders.plot")

    rows = plot_verdicts(result, fam, backbone=backbone, n_boot=n_boot, seed=seed)
    k = len(result["config"]["orders"]) + 1  # rows per summary
    heights = [1.2 + 0.32 * k] * len(fam)
    fig, axes = plt.subplots(len(fam), 1, squeeze=False, layout="constrained",
                             figsize=(plotting.MAX_WIDTH, sum(heights)))
    for i, (ax, s) in enumerate(zip(axes[:, 0], fam)):
        group = rows[i * k:(i + 1) * k]
        labels = [f"batch order {o}" for o in result["config"]["orders"]] + [f"over {k - 1} orders"]
        plotting.forest_plot(group, ax=ax, labels=labels, title=f"{s}: TENT − BN adaptation, backbone {backbone}")
    return fig


def findings(result: dict, fam: dict, *, backbone: int = 0) -> list[str]:
    """One line per summary: the over-orders verdict, the spread over orders and the two SE parts."""
    lines = []
    for s, (v, c) in fam.items():
        spread = ", ".join(f"{d:+.4f}" for d in c["per_order"])
        lines.append(f"backbone {backbone}, {v} — per batch order: {spread} (SD over orders {c['sd_orders']:.4f}; "
                     f"SE from images {c['se_images']:.4f}, from orders {c['sd_orders'] / math.sqrt(c['orders']):.4f}; "
                     f"n = {result['n']} images x {c['orders']} orders)")
    return lines


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pcnet.experiments.tta_orders", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", type=int, nargs="+", default=None,
                        help="backbone seeds (default: 0 1 2, the committed result's; 0 with --smoke)")
    parser.add_argument("--backbone-seed", type=int, default=None, help="one backbone (same as --backbones B)")
    parser.add_argument("--orders", type=int, nargs="+", default=None,
                        help="batch orders (default: 0-4); a worker with part of them needs a scratch --out")
    parser.add_argument("--smoke", action="store_true", help="tiny configuration (seconds); needs --out")
    parser.add_argument("--out", default=None, help=f"result file (default: {RESULT_PATH})")
    parser.add_argument("--chunk-dir", default=None, help=f"chunk folder (default: {CHUNK_DIR}; smoke: beside --out)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-boot", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.smoke and args.out is None:
        parser.error("--smoke writes a tiny study: give it a scratch file with --out")
    default = [0] if args.smoke else list(COMMITTED_BACKBONES)
    backbones = tuple(args.backbones or ([args.backbone_seed] if args.backbone_seed is not None else default))
    config = dataclasses.replace(SMOKE if args.smoke else Config(), backbones=backbones)
    config = dataclasses.replace(config, orders=tuple(args.orders)) if args.orders else config
    out = args.out or str(RESULT_PATH)
    # the committed result holds every backbone and every order; a worker for some backbones or part of the orders
    # shares the committed chunk folder (keys leave both lists out) but writes its result to a scratch --out
    try:
        full = not args.smoke and set(backbones) == set(COMMITTED_BACKBONES) and config.orders == Config().orders
        chunks.check_output(out, kind="file", committed=full)
        chunk_dir = chunks.chunk_folder(args.chunk_dir, default=CHUNK_DIR, committed=not args.smoke, out=out)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    result = compute(config, chunk_dir=chunk_dir, device=args.device, log=lambda m: print(m, flush=True))
    from .weights import save_json_result

    command = " ".join(["python -m pcnet.experiments.tta_orders"] + (argv if argv is not None else sys.argv[1:]))
    sha = save_json_result(out, result, command=command, seed=config.orders[0],
                           extra={"cpu_seconds_total": result["cpu_seconds"]})
    print(f"wrote {out} (sha256 {sha[:12]}); {result['cpu_seconds']} CPU-s in chunks")
    if len(config.orders) < 2:  # a worker with one order: no verdict over orders until the parts are assembled
        print("one batch order: no verdict over orders (run the full command to assemble them)")
        return 0
    for b in config.backbones:
        for line in findings(result, family(result, backbone=b, n_boot=args.n_boot), backbone=b):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
