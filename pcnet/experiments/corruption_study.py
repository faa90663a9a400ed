"""Chapter 5's corruption study: every method on our generated corruptions of Fashion-MNIST, per image.

One study = one class-stratified test subset, corrupted with all ``corruptions.ALL`` x 5 severities (cached by
``corruptions.corrupted_set``), and, for each value set of (beta, lam, alpha) (the paper's and chapter 4's tuned
ones), the dynamics and their four controls of the prediction's content:

* ``dynamics``: eq. eq-update for ``timesteps`` steps (logits at every t = 0..T);
* ``zero`` / ``shuffled`` / ``mean``: the same update with the prediction replaced by 0, by the prediction made
  for another image of the batch, or by the batch-mean prediction (random batches of ``batch`` images);
* ``rescale``: one feedforward pass with each PCoder output times ``dynamics.fixed_point_scale`` (beta, lam),
  where the zero-prediction control settles;

plus two test-time-adaptation baselines on the backbone, BN adaptation and online TENT, which see randomly
composed batches of ``tta_batch`` images and restart from the source weights for every corruption x severity.

Every method sees the images in one random order (``order_seed``), so batches are random, not class-sorted.
Results are per-image correctness, stored bit-packed: ``correct[method]`` (T+1 or 1, C, S, n) and
``clean[method]`` (T+1 or 1, n). The CLI computes one chunk per corruption (plus one for the clean images),
each written atomically with its sha256, so an interrupted run resumes where it stopped:

    python -m pcnet.experiments.corruption_study --out data/results/ch5_corruptions.json

Chunks live in ``data/chunks/ch5_corruptions/<chunk>.<key>.json`` (committed, so a study is never lost); the key
hashes the settings (without the list of corruptions), the value sets, the chunk and the sha256 of every weight
file it reads (:mod:`pcnet.experiments.chunks`), so a retrain never reuses an old chunk. Several processes can share
the work: give each its own ``--names`` and a scratch ``--out`` (a partial study must not land in ``data/results``:
the CLI refuses), then run the command above once more; it finds every chunk done and only assembles. The
replicate backbones (chapter 5's claims at the paper values): ``--backbone-seed 1`` and ``--backbone-seed 2``
write ``data/results/ch5_corruptions_backbone{1,2}.json``. Measured on one core (seed-0 network, T = 10, 2,000
images): about 100 CPU-s for the clean chunk and 500 CPU-s per corruption chunk (5 severities x 12 methods).
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import pathlib
import sys
import time
import zlib

import numpy as np
import torch

import pcnet
from pcnet.dynamics import fixed_point_scale

from . import chunks, corruptions, metrics, models, tta, weights
from .data import DATA_DIR, fashion_mnist

PAPER = {"beta": 0.8, "lam": 0.1, "alpha": 0.01}
FEEDBACK = {"dynamics": "prediction", "zero": "zero", "shuffled": "shuffled", "mean": "mean"}
TUNED_PATH = DATA_DIR / "results" / "ch4_tuned_hparams.json"
RESULT_PATH = DATA_DIR / "results" / "ch5_corruptions.json"
CHUNK_DIR = DATA_DIR / "chunks" / "ch5_corruptions"  # committed: a study is never lost between sessions


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """What one study computes. ``per_class`` images per class of the test split (10 classes)."""
    per_class: int = 200
    timesteps: int = 10
    feedback_seed: int = 0
    backbone_seed: int = 0            # which of the three independently trained backbones (with its own decoders)
    subset_seed: int = 0
    corruption_seed: int = 0
    order_seed: int = 0
    batch: int = 500
    tta_batch: int = 128
    tent_steps: int = 1
    tent_lr: float = 1e-3
    names: tuple = corruptions.ALL

    def __post_init__(self):
        for field in ("per_class", "timesteps", "batch", "tta_batch", "tent_steps"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"StudyConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.batch < 2:
            raise ValueError("StudyConfig.batch must be >= 2: the shuffled and mean controls mix a batch")
        unknown = set(self.names) - set(corruptions.ALL)
        if unknown:
            raise ValueError(f"StudyConfig.names: unknown corruptions {sorted(unknown)}; pick from corruptions.ALL")


def read_tuned(path=TUNED_PATH) -> tuple[dict, str]:
    """Chapter 4's recommended (beta, lam, alpha) from its result file, and the file's sha256."""
    result = weights.load_json_result(path)
    rec = result.get("recommended") if isinstance(result, dict) else None
    if not isinstance(rec, dict) or not {"beta", "lam", "alpha"} <= set(rec):
        raise ValueError(f"{path} has no result['recommended'] with beta, lam, alpha: re-create it with "
                         "book/04_dynamics.ipynb (chapter 4's tuning)")
    return {k: float(rec[k]) for k in ("beta", "lam", "alpha")}, weights.sha256_file(path)


def method_names(value_sets) -> list[str]:
    """'paper: dynamics', ..., 'tuned: rescale', then 'BN adaptation', 'TENT'."""
    return [f"{v}: {m}" for v in value_sets for m in (*FEEDBACK, "rescale")] + ["BN adaptation", "TENT"]


def random_order(n: int, *, seed: int) -> torch.Tensor:
    """A fixed random permutation of n images: batches drawn in this order are randomly composed."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _in_order(predict, images, labels, *, order, batch: int, device=None) -> torch.Tensor:
    """Correctness (T+1 or 1, n) of ``predict`` run over ``images`` in ``order`` (batches on ``device``),
    returned in the input order."""
    correct = metrics.correct_per_timestep(predict, images[order], labels[order], batch_size=batch,
                                           device=device)  # (T+1, n)
    out = torch.empty_like(correct)
    out[:, order] = correct
    return out


def _predictors(nets: dict, backbone, config: StudyConfig) -> dict:
    """name -> (predict, batch size, reset or None) for every method of the study."""
    out = {}
    for v, net in nets.items():
        for m, feedback in FEEDBACK.items():
            out[f"{v}: {m}"] = ((lambda x, net=net, fb=feedback: net(x, timesteps=config.timesteps, feedback=fb)),
                                config.batch, None)  # (T+1, B, K)
        hp = {k: t.tolist() for k, t in net.hparams().items()}
        scale = [fixed_point_scale(beta=b, lam=lam) for b, lam in zip(hp["beta"], hp["lam"])]
        out[f"{v}: rescale"] = ((lambda x, net=net, s=scale: pcnet.rescaled_forward(net, x, scale=s)),  # (B, K)
                                config.batch, None)
    bn = tta.BNAdapt(backbone)
    tent = tta.Tent(backbone, steps=config.tent_steps, lr=config.tent_lr)
    out["BN adaptation"] = (bn, config.tta_batch, bn.reset)
    out["TENT"] = (tent, config.tta_batch, tent.reset)
    return out


def build_methods(config: StudyConfig, value_sets: dict, *, device="cpu") -> dict:
    """The study's predictors for value sets {name: {beta, lam, alpha}} (networks of ``feedback_seed``), with
    every network on ``device``."""
    nets = {v: models.load_reference_prednet(seed=config.feedback_seed, backbone_seed=config.backbone_seed,
                                             **hp).to(device)
            for v, hp in value_sets.items()}
    backbone = next(iter(nets.values())).backbone
    return _predictors(nets, backbone, config)


def evaluate_set(methods: dict, images, labels, *, order, device=None) -> dict:
    """Correctness {name: bool (T+1 or 1, n)} of every method on one set of images (TTA reset first)."""
    out = {}
    for name, (predict, batch, reset) in methods.items():
        if reset is not None:
            reset()  # every corruption x severity starts from the source weights
        out[name] = _in_order(predict, images, labels, order=order, batch=batch, device=device)  # TENT enables grad itself
    return out


def evaluate_corruption(methods: dict, stack, labels, *, order, device=None) -> dict:
    """Correctness {name: bool (T+1 or 1, S, n)} on one corruption's severities ``stack`` (S, n, 1, H, W)."""
    per_severity = [evaluate_set(methods, imgs, labels, order=order, device=device) for imgs in stack]
    return {k: torch.stack([p[k] for p in per_severity], dim=1) for k in methods}


# ----------------------------------------------------------------------------- bit-packed storage
def encode_bits(correct: torch.Tensor) -> dict:
    """A bool tensor as {"shape", "bits"}: packed bits, zlib-compressed, base64 (JSON-safe, exact)."""
    packed = np.packbits(correct.cpu().numpy().astype(bool).ravel())
    return {"shape": list(correct.shape), "bits": base64.b64encode(zlib.compress(packed.tobytes(), 9)).decode()}


def decode_bits(doc: dict) -> torch.Tensor:
    """Inverse of ``encode_bits``."""
    shape = tuple(doc["shape"])
    raw = np.frombuffer(zlib.decompress(base64.b64decode(doc["bits"])), dtype=np.uint8)
    flat = np.unpackbits(raw)[:int(np.prod(shape))].astype(bool)
    return torch.from_numpy(flat.reshape(shape))


# ----------------------------------------------------------------------------- resumable chunks
COMMAND = "python -m pcnet.experiments.corruption_study"


def store(config: StudyConfig, value_sets: dict, *, chunk_dir=None) -> chunks.ChunkStore:
    """The study's chunks (one per corruption and one for the clean images), keyed by the settings (without the
    list of corruptions: several processes may share the work), the value sets, the chunk and the files it reads."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "names"}  # one chunk per corruption
    if chunk_dir is None:  # the committed folder keeps committed configurations only (a smoke chapter's go to the cache)
        committed = committed_path(dataclasses.replace(config, names=StudyConfig().names), tuple(value_sets))
        chunk_dir = CHUNK_DIR if committed is not None else DATA_DIR / "cache" / "ch5_chunks"
    return chunks.ChunkStore(pathlib.Path(chunk_dir), study="ch5_corruptions",
                             config={"settings": fields, "value_sets": value_sets}, command=COMMAND)


def inputs(config: StudyConfig) -> dict[str, str]:
    """sha256 of the files a chunk reads: the backbone and decoder weights of its backbone, Fashion-MNIST test."""
    return chunks.reference_inputs(backbone_seed=config.backbone_seed, decoder_seed=config.feedback_seed)


def _compute_chunk(name, cset, methods, order, *, device=None) -> dict:
    cpu = time.process_time()
    if name == "clean":
        correct = evaluate_set(methods, cset["clean"], cset["labels"], order=order, device=device)
    else:
        correct = evaluate_corruption(methods, cset["images"][name], cset["labels"], order=order, device=device)
    return {"correct": {k: encode_bits(v) for k, v in correct.items()}, "cpu_seconds": time.process_time() - cpu}


def study_data(config: StudyConfig, *, progress: bool = False) -> dict:
    """The stratified clean subset and its corrupted sets (generated once, cached with a manifest)."""
    x, y = fashion_mnist(split="test").tensors
    idx = corruptions.stratified_subset(y, per_class=config.per_class, seed=config.subset_seed)
    cset = corruptions.corrupted_set(x[idx], y[idx], names=config.names, seed=config.corruption_seed,
                                     progress=progress)
    return {**cset, "clean": x[idx], "indices": idx}


def run_study(config: StudyConfig, value_sets: dict, *, chunk_dir=None, progress: bool = True, log=None,
              device="cpu") -> dict:
    """Compute (or resume) every chunk of a study on ``device`` and assemble the result (plain JSON)."""
    from tqdm.auto import tqdm
    st, digests = store(config, value_sets, chunk_dir=chunk_dir), inputs(config)
    cset = study_data(config, progress=progress)
    order = random_order(len(cset["labels"]), seed=config.order_seed)
    methods = build_methods(config, value_sets, device=device)
    done, revision = {}, weights.git_revision()  # the code this process imported
    for name in tqdm(["clean", *config.names], desc="chunks", disable=not progress):
        done[name] = st.load(name, digests)
        if done[name] is None:
            done[name] = _compute_chunk(name, cset, methods, order, device=device)
            path = st.save(name, digests, done[name], cpu_s=done[name]["cpu_seconds"], git=revision)
            if log:
                log(f"chunk {name}: {done[name]['cpu_seconds']:.0f} CPU-s -> {path}")
    return assemble(config, value_sets, cset, done)


def assemble(config: StudyConfig, value_sets: dict, cset: dict, chunks: dict) -> dict:
    """The study's result: per-image correctness per method, corruptions stacked as (T+1 or 1, C, S, n)."""
    names = list(config.names)
    correct = {m: encode_bits(torch.stack([decode_bits(chunks[c]["correct"][m]) for c in names], dim=1))
               for m in chunks["clean"]["correct"]}
    return {"config": {**dataclasses.asdict(config), "names": names}, "value_sets": value_sets,
            "severities": list(cset["severities"]), "n": len(cset["labels"]),
            "indices": cset["indices"].tolist(), "labels": cset["labels"].tolist(),
            "methods": list(correct), "correct": correct, "clean": chunks["clean"]["correct"],
            "cpu_seconds": {k: round(v["cpu_seconds"], 1) for k, v in chunks.items()}}


def load_study(result: dict) -> dict:
    """Decode a study result: {"correct": {method: bool (T+1|1, C, S, n)}, "clean": {method: (T+1|1, n)}, ...}."""
    return {**result, "correct": {k: decode_bits(v) for k, v in result["correct"].items()},
            "clean": {k: decode_bits(v) for k, v in result["clean"].items()}, "labels": torch.tensor(result["labels"])}


def committed(config: StudyConfig, value_sets: dict, *, path=RESULT_PATH) -> dict:
    """The committed study at ``path`` (sha256-checked), after checking it was computed for ``config`` and
    ``value_sets``; otherwise a clear error with the command that recomputes it."""
    fix = (f"compute it with `python -m pcnet.experiments.corruption_study --out {path}` "
           "(resumable, one chunk per corruption; or set RECOMPUTE = True in the chapter)")
    if not pathlib.Path(path).exists():
        raise FileNotFoundError(f"no committed corruption study at {path}: {fix}")
    result = weights.load_json_result(path)
    want = {**dataclasses.asdict(config), "names": list(config.names)}
    have = {"backbone_seed": 0, **result["config"]}  # results from before the replicate backbones ran on backbone 0
    if have != want:
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        raise ValueError(f"{path} was computed with other settings (committed, wanted): {diff}; {fix}")
    if result["value_sets"] != value_sets:
        raise ValueError(f"{path} holds value sets {result['value_sets']}, not {value_sets} (did chapter 4's "
                         f"tuned values change?); {fix}")
    return result


# ----------------------------------------------------------------------------- CLI
REPLICATE_BACKBONES = (1, 2)  # chapter 5's headline claims at the paper values, replicated on the other backbones


def committed_path(config: StudyConfig, value_set_names) -> pathlib.Path | None:
    """Where the committed result of this configuration lives, or None when it is not a committed configuration:
    the main study (backbone 0, paper and tuned values, every corruption) or a replicate (backbone 1 or 2, paper
    values) at the default settings."""
    if dataclasses.replace(config, backbone_seed=0) != StudyConfig():
        return None
    if config.backbone_seed == 0 and tuple(value_set_names) == ("paper", "tuned"):
        return RESULT_PATH
    if config.backbone_seed in REPLICATE_BACKBONES and tuple(value_set_names) == ("paper",):
        return RESULT_PATH.with_name(f"ch5_corruptions_backbone{config.backbone_seed}.json")
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pcnet.experiments.corruption_study", description=__doc__.split("\n")[0])
    defaults = StudyConfig()
    for field in ("per_class", "timesteps", "feedback_seed", "backbone_seed", "batch", "tta_batch", "tent_steps"):
        p.add_argument("--" + field.replace("_", "-"), type=int, default=getattr(defaults, field))
    p.add_argument("--names", nargs="+", default=list(defaults.names), help="corruptions (default: all 19)")
    p.add_argument("--value-sets", nargs="+", default=None, choices=("paper", "tuned"),
                   help="value sets (default: paper and tuned on backbone 0, paper on the replicate backbones)")
    p.add_argument("--tuned", type=pathlib.Path, default=TUNED_PATH, help="chapter 4's tuned-hparams result")
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="result file (default: the committed file of a committed configuration; required otherwise)")
    p.add_argument("--chunk-dir", type=pathlib.Path, default=None, help=f"chunk folder (default: {CHUNK_DIR})")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    return p


def main(argv=None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        config = StudyConfig(per_class=args.per_class, timesteps=args.timesteps, feedback_seed=args.feedback_seed,
                             backbone_seed=args.backbone_seed, batch=args.batch, tta_batch=args.tta_batch,
                             tent_steps=args.tent_steps, names=tuple(args.names))
    except ValueError as err:
        parser.error(str(err))
    names = tuple(args.value_sets or (("paper", "tuned") if args.backbone_seed == 0 else ("paper",)))
    target = committed_path(config, names)
    if args.out is None and target is None:
        parser.error("this is not a committed configuration (other sizes, a subset of corruptions or value sets): "
                     "give it a scratch result file with --out, e.g. --out /tmp/ch5.json")
    out = args.out or target
    committed = target is not None and pathlib.Path(out).resolve() == target.resolve()
    # a worker of a committed study (its --names a part of every corruption) shares the committed chunk folder:
    # chunk keys leave the list of corruptions out, so its chunks are the committed study's own
    shares = committed_path(dataclasses.replace(config, names=StudyConfig().names), names) is not None
    try:  # before any compute
        chunks.check_output(out, kind="file", committed=committed)
        chunk_dir = chunks.chunk_folder(args.chunk_dir, default=CHUNK_DIR, committed=committed or shares, out=out)
    except ValueError as err:
        parser.error(str(err))
    tuned, tuned_sha = read_tuned(args.tuned)
    value_sets = {k: {"paper": PAPER, "tuned": tuned}[k] for k in names}
    result = run_study(config, value_sets, chunk_dir=chunk_dir, log=lambda m: print(m, flush=True),
                       device=args.device)
    result["tuned_hparams"] = {"file": args.tuned.name, "sha256": tuned_sha}
    command = "python -m pcnet.experiments.corruption_study " + " ".join(argv if argv is not None else sys.argv[1:])
    sha = weights.save_json_result(out, result, command=command.strip(), seed=config.feedback_seed,
                                   extra={"tuned_hparams_file": str(args.tuned.name), "tuned_hparams_sha256": tuned_sha,
                                          "cpu_seconds_total": round(sum(result["cpu_seconds"].values()), 1)})
    print(f"wrote {out} (sha256 {sha})")


if __name__ == "__main__":
    main()
