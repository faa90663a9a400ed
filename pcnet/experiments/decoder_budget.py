"""Chapter 3's check of the decoders' training budget: do decoders trained longer change a verdict?

    python -m pcnet.experiments.decoder_budget                   # -> data/weights/ and data/results/
    python -m pcnet.experiments.decoder_budget --smoke --out DIR   # tiny run into DIR (tests)

Trains the reference decoders of feedback seed 0 again, for at most ``epochs`` epochs with early stopping
(``patience``; checkpointed, so a killed run resumes) and saves them under their own name: the committed decoders,
which chapters 4-6 use, stay as they are. Then both decoder sets run the dynamics on chapter 4's test images (clean
and its main noise, drawn exactly as ``python -m pcnet.experiments.dynamics_runs`` draws them) at the paper's and
at chapter 4's tuned values; the per-image outcomes are saved with provenance. :func:`family` turns them into one
Holm family of paired verdicts. Nothing runs at import.
"""
from __future__ import annotations

import dataclasses
import pathlib

NAME = "fmnist_vgg_feedback_seed0_es.pt"
RESULT_NAME = "ch3_decoder_budget.json"
SETS = ("committed", "longer")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every parameter of the check (the training options beyond these are the CLI's feedback defaults)."""
    epochs: int = 10
    patience: int = 2
    n_test: int = 10_000
    timesteps: int = 10
    batch_size: int = 500
    limit: int | None = None  # training (and validation) images; None: all (smoke runs use a few hundred)


SMOKE = Config(epochs=2, patience=1, n_test=40, timesteps=2, batch_size=20, limit=200)


def result_path():
    from .data import DATA_DIR
    return DATA_DIR / "results" / RESULT_NAME


def train_longer(cfg: Config, *, out: pathlib.Path, checkpoint: pathlib.Path, command: str) -> dict:
    """Decoders of seed 0 on the reference backbone, ``cfg.epochs`` at most with early stopping, saved at ``out``
    (provenance: command, seed, options, validation losses, best epoch); returns that record. Weights already
    at ``out`` with the same options are kept (a rerun only evaluates)."""
    from . import train
    from .models import load_reference_backbone
    from .weights import load_provenance, save_decoders

    options = {**train.FEEDBACK_DEFAULTS, "epochs": cfg.epochs}
    record = {"options": {**options, "patience": cfg.patience, "limit": cfg.limit}}
    if out.exists() and load_provenance(out).get("extra", {}).get("options") == record["options"]:
        return load_provenance(out)["extra"]
    net, history = train.reference_feedback_run(load_reference_backbone(), seed=0, checkpoint=checkpoint,
                                                patience=cfg.patience, limit=cfg.limit, **options)
    record.update({k: history[k] for k in ("val_loss", "best_epoch", "epochs_run", "train_seconds")})
    save_decoders(out, net=net, preset="fmnist_vgg", command=command, seed=0, extra=record)
    return record


def outcomes(decoders: pathlib.Path, values: dict, cfg: Config) -> dict:
    """{condition label: {"t0": packed bools, "T": packed bools}} of the dynamics with ``decoders`` at ``values``."""
    import pcnet
    from . import dynamics_runs, dynamics_study as study, models
    from .weights import load_decoders

    net = pcnet.predify(models.load_reference_backbone(), layers=models.FMNIST_VGG_LAYERS,
                        input_shape=models.BACKBONES["fmnist_vgg"][1], **values)
    load_decoders(decoders, net, preset="fmnist_vgg", require_fit=False)
    runs, ch4 = {}, dynamics_runs.Config(n_test=cfg.n_test)
    for cond in (("clean", 0.0), ch4.main):
        correct = study.correct_under(net.eval(), dynamics_runs._test(ch4, cond), control="prediction",
                                      timesteps=cfg.timesteps, batch_size=cfg.batch_size)  # (T+1, n)
        runs[study.label(cond)] = {"t0": study.pack(correct[0]), "T": study.pack(correct[-1])}
    return runs


def family(result: dict) -> list:
    """One Holm family: for each value set and condition, the dynamics' gain (t=T - t=0) with the committed and
    with the longer-trained decoders, and longer minus committed at t=T (same images)."""
    from .dynamics_study import unpack
    from .verdicts import holm_family, paired_proportions

    n, out = result["n"], []
    for values, conds in result["runs"].items():
        for cond, by_set in conds.items():
            c, x = ({k: unpack(v, n) for k, v in by_set[s].items()} for s in SETS)
            out += [paired_proportions(c["T"], c["t0"], contrast=f"{values}, {cond}: committed decoders, t=T − t=0"),
                    paired_proportions(x["T"], x["t0"], contrast=f"{values}, {cond}: longer-trained, t=T − t=0"),
                    paired_proportions(x["T"], c["T"], contrast=f"{values}, {cond}: longer-trained − committed (t=T)")]
    return holm_family(out)


def compute(cfg: Config, *, out_dir: pathlib.Path, committed: pathlib.Path, tuned: dict, command: str,
            checkpoint: pathlib.Path) -> dict:
    """Train (or resume from ``checkpoint``) the longer decoders into ``out_dir`` and evaluate both sets; returns
    the plain-JSON result."""
    weights = pathlib.Path(out_dir) / NAME
    history = train_longer(cfg, out=weights, checkpoint=checkpoint, command=command)
    checkpoint.unlink(missing_ok=True)
    from .dynamics_runs import Config as Chapter4

    paper = dict(Chapter4().paper)  # chapter 4's paper values, one definition
    values = {"paper values": paper, "tuned values": {k: tuned[k] for k in ("beta", "lam", "alpha")}}
    files = dict(zip(SETS, (committed, weights)))
    runs = {name: {} for name in values}
    for name, v in values.items():
        for s, path in files.items():
            for cond, packed in outcomes(path, v, cfg).items():
                runs[name].setdefault(cond, {})[s] = packed
    return {"config": dataclasses.asdict(cfg), "n": cfg.n_test, "values": values, "runs": runs,
            "training": {k: history[k] for k in ("val_loss", "best_epoch", "epochs_run")}}


def main(argv=None) -> None:
    import argparse
    import sys

    import torch

    from .data import DATA_DIR
    from .models import feedback_weights_path
    from .weights import load_json_result, save_json_result

    parser = argparse.ArgumentParser(prog="python -m pcnet.experiments.decoder_budget", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny parameters (tests); needs --out")
    parser.add_argument("--out", default=None, help="folder for the weights and the result (default: data/)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is the most CPU-efficient)")
    args = parser.parse_args(argv)
    if args.smoke and args.out is None:
        parser.error("--smoke writes a tiny result: give it a scratch folder with --out")
    torch.set_num_threads(args.threads)
    cfg = SMOKE if args.smoke else Config()
    weights_dir = pathlib.Path(args.out) if args.out else DATA_DIR / "weights"
    result_file = pathlib.Path(args.out) / RESULT_NAME if args.out else result_path()
    tuned = load_json_result(DATA_DIR / "results" / "ch4_tuned_hparams.json")["recommended"]
    command = "python -m pcnet.experiments.decoder_budget " + " ".join(sys.argv[1:] if argv is None else argv)
    checkpoint = (pathlib.Path(args.out) if args.out else DATA_DIR / "cache") / (NAME + ".ckpt")  # git-ignored
    result = compute(cfg, out_dir=weights_dir, committed=feedback_weights_path(seed=0), tuned=tuned,
                     command=command.strip(), checkpoint=checkpoint)
    sha = save_json_result(result_file, result, command=command.strip(), seed=0, extra={"weights": NAME})
    print(f"wrote {result_file} (sha256 {sha[:12]})")


if __name__ == "__main__":
    main()
