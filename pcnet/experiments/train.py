"""Training loops: the feedforward backbone (chapter 2) and the feedback decoders (chapter 3).

Both loops are deterministic for a given `seed`, show tqdm progress bars, and, given a
`checkpoint` path, save their full state atomically after every epoch and resume from it.
Command line (writes the committed reference weights with provenance):

    python -m pcnet.experiments.train backbone --seed 0
    python -m pcnet.experiments.train feedback --seed 0
    python -m pcnet.experiments.train backbone --seed 1                     # replicate: fmnist_vgg_seed1.pt
    python -m pcnet.experiments.train feedback --backbone-seed 1 --seed 0   # its decoders

With ``--data PATH`` (an ImageFolder) the feedback command trains a preset at scale, on several GPUs with torchrun:
``torchrun --nproc_per_node=N -m pcnet.experiments.train feedback --preset pvgg16 --data PATH``
(see pcnet.experiments.train_scale).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pcnet.experiments import devices

from . import evaluate
from .data import as_tensors, images_of
from .early_stopping import EarlyStopping
from .files import save_torch_atomic
from .schedule import lr_at
from .schedule import set_lr as _set_lr

__all__ = [
    "BACKBONE_DEFAULTS",
    "FEEDBACK_DEFAULTS",
    "lr_at",
    "train_classifier",
    "train_feedback",
    "state_fingerprint",
    "seeded_prednet",
    "reference_data",
    "reference_backbone_run",
    "reference_feedback_run",
]

# Full parameters of the committed reference runs (the chapters' parameters cells use the same).
BACKBONE_DEFAULTS = dict(epochs=4, batch_size=128, lr=3e-3, val_size=5000)
FEEDBACK_DEFAULTS = dict(epochs=2, batch_size=64, lr=1e-2, val_size=5000)
DIVERGED = 10.0  # feedback training has diverged when an epoch's mean loss exceeds this times the first batch's


def _batches(n: int, batch_size: int, *, seed: int, epoch: int) -> list[torch.Tensor]:
    """Shuffled index batches for one epoch; depends only on (seed, epoch), so resuming is exact."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return list(torch.randperm(n, generator=g).split(batch_size))


def _checkpoint(path, *, config: dict, epoch: int, history: dict, **modules) -> None:
    """Atomically save the state after `epoch` epochs (modules: name -> object with state_dict)."""
    if path is not None:
        save_torch_atomic({"config": config, "epoch": epoch, "history": history, "rng": torch.get_rng_state(),
                      **{key: module.state_dict() for key, module in modules.items()}}, Path(path))


def _resume(checkpoint, config: dict, modules: dict) -> tuple[int, dict | None]:
    """Load `checkpoint` into `modules` (name -> object with load_state_dict) if it exists."""
    if checkpoint is None or not Path(checkpoint).exists():
        return 0, None
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, garbage, or not a torch file
        raise RuntimeError(f"checkpoint {checkpoint} is unreadable ({type(err).__name__}: truncated, damaged or not "
                           f"a torch file); delete it to start afresh") from err
    if not isinstance(state, dict) or "config" not in state:
        raise RuntimeError(f"checkpoint {checkpoint} is not a training checkpoint; delete it to start afresh")
    if state["config"] != config:
        raise ValueError(f"checkpoint {checkpoint} was made with {state['config']}, not {config}; "
                         "delete it to start afresh or pass the same options to resume")
    for key, module in modules.items():
        module.load_state_dict(state[key])
    torch.set_rng_state(state["rng"])
    return state["epoch"], state["history"]


def _classifier_epoch(model, x, y, optimizer, *, epoch, seed, batch_size, lr, total, bar):
    """One epoch of cross-entropy training; returns (per-batch losses, accuracy) on the training batches."""
    model.train()
    losses, correct, batches = [], 0, _batches(len(x), batch_size, seed=seed, epoch=epoch)
    for i, index in enumerate(batches):
        _set_lr(optimizer, lr_at(epoch * len(batches) + i, total, lr))  # eq-lr-schedule
        device = next(model.parameters()).device
        images = x[index].to(device).contiguous(memory_format=torch.channels_last)  # (B,C,H,W)
        labels = y[index].to(device)  # (B,)
        logits = model(images)  # (B,K)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        correct += (logits.argmax(1) == labels).sum().item()
        bar.update(len(index))
    return losses, correct / len(x)


def train_classifier(model: nn.Module, train_set, *, epochs: int, batch_size: int, lr: float,
                     seed: int, checkpoint=None, val_set=None, weight_decay: float = 5e-4,
                     device=None, progress: bool = True, run_options: dict | None = None) -> dict:
    """Train `model` with cross-entropy (AdamW, warm-up + cosine learning rate); returns the history.

    `device`: where to train (default: the GPU if there is one, else the CPU); the model stays there.
    history: lists per epoch of `train_loss` (mean over batches), `train_acc`, `val_acc` (if `val_set`),
    `seconds`; and `step_loss`, the loss of every batch. A `checkpoint` is resumed only when every option that
    changes the result matches: the arguments, a sha256 of the training data and the caller's `run_options`.
    """
    torch.manual_seed(seed)
    x, y = as_tensors(train_set)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device, memory_format=torch.channels_last)  # channels_last: faster convolutions
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    config = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, n=len(x), weight_decay=weight_decay,
                  data=data_fingerprint(x, y), **(run_options or {}))
    start, history = _resume(checkpoint, config, {"model": model, "optimizer": optimizer})
    history = history or {"train_loss": [], "train_acc": [], "val_acc": [], "seconds": [], "step_loss": []}
    total = epochs * math.ceil(len(x) / batch_size)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        with tqdm(total=len(x), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress) as bar:
            losses, acc = _classifier_epoch(model, x, y, optimizer, epoch=epoch, seed=seed,
                                            batch_size=batch_size, lr=lr, total=total, bar=bar)
            loss = sum(losses) / len(losses)
            history["val_acc"].append(evaluate.classifier_accuracy(model, val_set)[0] if val_set is not None else None)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", val_acc=history["val_acc"][-1])
        history["train_loss"].append(loss), history["train_acc"].append(acc), history["step_loss"].extend(losses)
        history["seconds"].append(time.perf_counter() - t0)
        _checkpoint(checkpoint, config=config, epoch=epoch + 1, history=history, model=model, optimizer=optimizer)
    model.to(memory_format=torch.contiguous_format)
    return history


def _fingerprint(named) -> str:
    """sha256 over (prefix, tensor) pairs: each prefix, dtype, shape and the tensor's bytes."""
    digest = hashlib.sha256()
    for prefix, t in named:
        t = t.detach().cpu().contiguous()
        digest.update(f"{prefix}{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_fingerprint(*tensors: torch.Tensor) -> str:
    """sha256 over the dtypes, shapes and values of ``tensors`` (a training split: images and labels)."""
    return _fingerprint(("", t) for t in tensors)


def state_fingerprint(module: nn.Module) -> str:
    """sha256 over every tensor of `module.state_dict()` (names, dtypes, shapes, values, BN buffers too)."""
    return _fingerprint((f"{key}:", value) for key, value in module.state_dict().items())


def seeded_prednet(backbone: nn.Module, *, name: str = "fmnist_vgg", seed: int = 0, **predify_kwargs):
    """`backbone` predified at FMNIST_VGG_LAYERS with (untrained) decoders initialised from `seed`."""
    import pcnet
    from pcnet.experiments.models import BACKBONES, FMNIST_VGG_LAYERS

    torch.manual_seed(seed)
    return pcnet.predify(backbone, layers=FMNIST_VGG_LAYERS, input_shape=BACKBONES[name][1], **predify_kwargs)


def train_feedback(net, train_set, *, epochs: int, batch_size: int, lr: float, seed: int,
                   checkpoint=None, val_set=None, progress: bool = True, precision: str | None = None,
                   run_options: dict | None = None, patience: int | None = None) -> dict:
    """Train only the decoders of PredNet `net` on eq-feedback-loss (Adam, schedule of `lr_at`); the
    backbone stays frozen in eval mode, BatchNorm running statistics included. No labels are needed:
    `train_set` (and `val_set`) is a tensor of images (N, C, H, W), a dataset of images or of (image, label)
    pairs, or a DataLoader over either (read once; labels are ignored; see `data.images_of`). history: `step_loss`
    (per batch and layer), `epoch_loss`, `val_loss` (per epoch and layer), `seconds`.

    Batches go to the network's device and dtype (`net.to("cuda")` trains on the GPU); `precision="bf16"`
    runs the steps under bf16 autocast, `"fp16"` under float16 autocast with a gradient scaler (GPUs without bf16).
    A non-finite loss, gradient or weight stops training with a FloatingPointError naming the batch, and the
    decoders are put back as they were when this call started (or resumed); so does a finite divergence, an
    epoch whose mean summed loss exceeds `DIVERGED` times the first batch's. A `checkpoint` is resumed only
    when the options, a sha256 of the training data and `run_options` match.

    `patience` (needs `val_set`): early stopping — stop once the summed validation loss has not improved for
    `patience` epochs (`epochs` is then the maximum and sets the schedule) and put back the best epoch's decoders;
    history then also holds `best_epoch` and `epochs_run`."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    import pcnet

    if precision not in (None, "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be None, 'fp32', 'bf16' or 'fp16' for training, got {precision!r}")
    if patience is not None and val_set is None:
        raise ValueError("patience (early stopping) watches the validation loss: pass val_set too")
    stopper = EarlyStopping(patience=patience) if patience is not None else None
    torch.manual_seed(seed)
    x = images_of(train_set, what="train_set")  # (N, C, H, W): labels, if any, are not used
    device, dtype = devices.of(net)
    optimizer = torch.optim.Adam(net.decoders.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # fp16 needs loss scaling (no-op else)
    config = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, n=len(x), data=data_fingerprint(x),
                  **(run_options or {}), **({"patience": patience} if stopper else {}))
    modules = {"decoders": net.decoders, "optimizer": optimizer, **({"stopper": stopper} if stopper else {})}
    start, history = _resume(checkpoint, config, modules)
    history = history or {"step_loss": [], "epoch_loss": [], "val_loss": [], "seconds": []}
    net.train()  # PredNet.train: decoders train, the backbone stays in eval mode
    total, initial = epochs * math.ceil(len(x) / batch_size), copy.deepcopy(net.decoders.state_dict())
    for epoch in range(start, epochs):
        if stopper is not None and stopper.stop:
            break
        t0, losses, batches = time.perf_counter(), [], _batches(len(x), batch_size, seed=seed, epoch=epoch)
        for i, index in enumerate(tqdm(batches, desc=f"feedback epoch {epoch + 1}/{epochs}", disable=not progress)):
            _set_lr(optimizer, lr_at(epoch * len(batches) + i, total, lr))  # eq-lr-schedule
            try:
                with devices.autocast(device, precision):
                    losses.append(pcnet.feedback_step(net, x[index].to(device, dtype), optimizer,
                                                      scaler=scaler).float().cpu())  # (N,)
            except (FloatingPointError, ValueError) as err:
                net.decoders.load_state_dict(initial)
                raise FloatingPointError(f"feedback training stopped at epoch {epoch + 1}, batch {i + 1} of "
                                         f"{len(batches)} (lr={lr}): {err} The decoders were put back as they were "
                                         f"before training") from err
        history["step_loss"] += torch.stack(losses).tolist()
        history["epoch_loss"].append(torch.stack(losses).mean(0).tolist())
        _check_diverged(history, net, initial, epoch=epoch, lr=lr)
        history["val_loss"].append(evaluate.feedback_loss_on(net, val_set).tolist() if val_set is not None else None)
        history["seconds"].append(time.perf_counter() - t0)
        if stopper is not None:
            stopper.update(sum(history["val_loss"][-1]), epoch=epoch + 1, module=net.decoders)
        _checkpoint(checkpoint, config=config, epoch=epoch + 1, history=history, **modules)
    if stopper is not None:
        stopper.restore(net.decoders)  # the best epoch's decoders
        history.update(best_epoch=stopper.best_epoch, epochs_run=len(history["epoch_loss"]))
    net.eval()
    return history


def _check_diverged(history, net, initial, *, epoch: int, lr: float) -> None:
    """Raise FloatingPointError (decoders put back to ``initial``) when the last epoch's mean summed loss exceeds
    ``DIVERGED`` times the first batch's: finite but exploding weights (e.g. lr=1e6 gives losses of 1e13)."""
    first, last = sum(history["step_loss"][0]), sum(history["epoch_loss"][-1])
    if not last > DIVERGED * first:
        return
    net.decoders.load_state_dict(initial)
    raise FloatingPointError(f"feedback training diverged at epoch {epoch + 1} (lr={lr}): its mean loss {last:.4g} is "
                             f"{last / first:.3g} times the first batch's {first:.4g} (limit {DIVERGED:g} times). "
                             f"Lower the learning rate (e.g. lr={lr / 100:g}). The decoders were put back as they "
                             f"were before training")


# ---------------------------------------------------------------------------------------------
# Reference runs: the exact code behind the committed weights (also called by chapters 2 and 3)

def reference_data(name: str = "fmnist_vgg", *, split: str = "train"):
    """The dataset a reference backbone is trained on: Fashion-MNIST or CIFAR-10 (`split`)."""
    from pcnet.experiments import data

    return data.fashion_mnist(split=split) if name == "fmnist_vgg" else data.cifar10(split=split)


def _timed(train_fn, module, train, val, **options) -> dict:
    """``train_fn(module, train, val_set=val, **options)``'s history plus its wall time (`train_seconds`)."""
    t0 = time.perf_counter()
    history = train_fn(module, train, val_set=val, **options)
    history["train_seconds"] = time.perf_counter() - t0
    return history


def reference_backbone_run(*, name: str = "fmnist_vgg", seed: int = 0, epochs: int, batch_size: int,
                           lr: float, val_size: int = 5000, limit: int | None = None, checkpoint=None,
                           progress: bool = True):
    """Build and train a reference backbone on the training split less a validation split.

    `limit` keeps only the first `limit` training images (smoke runs). Returns (model, history);
    history also holds `test_acc` and `train_seconds`.
    """
    from pcnet.experiments.data import split_train_val
    from pcnet.experiments.models import build_backbone

    train, val = split_train_val(reference_data(name, split="train"), val_size=val_size, seed=0)
    if limit is not None:
        train = torch.utils.data.Subset(train, range(min(limit, len(train))))
    torch.manual_seed(seed)
    model = build_backbone(name)
    history = _timed(train_classifier, model, train, val, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                     checkpoint=checkpoint, progress=progress, run_options=dict(name=name, val_size=val_size, limit=limit))
    history["test_acc"] = evaluate.classifier_accuracy(model, reference_data(name, split="test"))[0]
    return model.eval(), history


def reference_feedback_run(backbone, *, name: str = "fmnist_vgg", seed: int = 0, epochs: int,
                           batch_size: int, lr: float, val_size: int = 5000, limit: int | None = None,
                           checkpoint=None, progress: bool = True, patience: int | None = None):
    """Predify `backbone` at FMNIST_VGG_LAYERS (decoders initialised from `seed`) and train the decoders
    (`patience`: early stopping on the validation split, see `train_feedback`).

    Returns (net, history) with history from `train_feedback` plus `train_seconds`.
    """
    from pcnet.experiments.data import split_train_val

    train, val = split_train_val(reference_data(name, split="train"), val_size=val_size, seed=0)
    if limit is not None:
        train, val = (torch.utils.data.Subset(s, range(min(limit, len(s)))) for s in (train, val))
    net = seeded_prednet(backbone, name=name, seed=seed)
    history = _timed(train_feedback, net, train, val, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                     checkpoint=checkpoint, progress=progress, run_options=dict(name=name, val_size=val_size, limit=limit),
                     patience=patience)
    return net.eval(), history


def _machine_load() -> dict:
    """Load average and thread count, recorded beside timings (the machine may be shared)."""
    return {"loadavg_1_5_15": list(os.getloadavg()), "torch_threads": torch.get_num_threads()}


def _train(what: str, *, name: str, seed: int, checkpoint, options: dict, backbone_seed: int = 0):
    """Run the reference training `what`; returns (weights path, save function, history, fingerprints).

    A backbone of seed S is saved as `name_seedS` (seed 0: `name`); feedback trains on backbone `backbone_seed`."""
    from pcnet.experiments.models import feedback_weights_path, load_reference_backbone, reference_weights_path
    from pcnet.experiments.weights import save_decoders, save_weights

    if what == "backbone":
        model, history = reference_backbone_run(name=name, seed=seed, checkpoint=checkpoint, **options)
        return (reference_weights_path(name, backbone_seed=backbone_seed),
                functools.partial(save_weights, state_dict=model.state_dict()), history, {})
    backbone = load_reference_backbone(name=name, backbone_seed=backbone_seed)
    fingerprints = {"backbone_before": state_fingerprint(backbone)}
    net, history = reference_feedback_run(backbone, name=name, seed=seed, checkpoint=checkpoint, **options)
    fingerprints["backbone_after"] = state_fingerprint(net.backbone)
    return (feedback_weights_path(name, seed=seed, backbone_seed=backbone_seed),
            functools.partial(save_decoders, net=net, preset=name), history, fingerprints)


def main(argv=None) -> None:
    """CLI: `python -m pcnet.experiments.train {backbone,feedback} --seed S [--epochs ...]` writes data/weights/.

    Training that diverges (a non-finite loss, gradient or weight) exits with status 1 and saves nothing."""
    import argparse
    import sys

    if any(a == "--data" or a.startswith("--data=") for a in (sys.argv[1:] if argv is None else argv)):
        from pcnet.experiments.train_scale import main as scale_main  # ImageFolder, DataLoader, torchrun

        return scale_main(argv)
    from pcnet.experiments.data import DATA_DIR
    from pcnet.experiments.weights import save_json_result

    parser = argparse.ArgumentParser(prog="python -m pcnet.experiments.train", description=main.__doc__)
    parser.add_argument("what", choices=["backbone", "feedback"])
    parser.add_argument("--name", default="fmnist_vgg", choices=["fmnist_vgg", "cifar10_vgg"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone-seed", type=int, default=None,
                        help="feedback: train decoders on this backbone seed's weights (default 0)")
    for key, value in {**FEEDBACK_DEFAULTS, **BACKBONE_DEFAULTS}.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=None)
    parser.add_argument("--limit", type=int, default=None, help="use only this many training images (tests)")
    parser.add_argument("--patience", type=int, default=None,
                        help="feedback: early stopping after this many epochs without a lower validation loss "
                             "(--epochs is then the maximum); the best epoch's decoders are saved")
    args = parser.parse_args(argv)
    defaults = BACKBONE_DEFAULTS if args.what == "backbone" else FEEDBACK_DEFAULTS
    options = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    options.update({"limit": args.limit} if args.limit is not None else {})
    options.update({"patience": args.patience} if args.patience is not None else {})
    command = "python -m pcnet.experiments.train " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.what == "backbone" and args.backbone_seed is not None:
        parser.error("--backbone-seed is for `feedback`; a backbone's own seed is --seed")
    if args.what == "backbone" and args.patience is not None:
        parser.error("--patience (early stopping) is for `feedback`; a backbone trains for --epochs")
    backbone_seed = args.seed if args.what == "backbone" else (args.backbone_seed or 0)
    from pcnet.experiments.models import reference_weights_path

    stem = reference_weights_path(args.name, backbone_seed=backbone_seed).stem
    checkpoint = DATA_DIR / "cache" / f"{stem}_{args.what}_seed{args.seed}.ckpt"
    load_before = _machine_load()
    try:
        out, save, history, fingerprints = _train(args.what, name=args.name, seed=args.seed, checkpoint=checkpoint,
                                                  options=options, backbone_seed=backbone_seed)
    except (FloatingPointError, ValueError) as err:
        raise SystemExit(f"{parser.prog} {args.what}: {err}\nNothing was saved.") from err
    extra = {"options": options, "load_before": load_before, "load_after": _machine_load(),
             **fingerprints,
             **{k: history[k] for k in ("train_seconds", "test_acc", "best_epoch", "epochs_run") if k in history}}
    sha = save(out, command=command, seed=args.seed, extra=extra)
    save_json_result(DATA_DIR / "results" / f"{out.stem}_history.json", history, command=command,
                     seed=args.seed, extra={"weights": out.name, "weights_sha256": sha})
    checkpoint.unlink(missing_ok=True)
    print(f"saved {out} (sha256 {sha[:12]}); " + ", ".join(f"{k}={v}" for k, v in extra.items()
                                                            if k in ("train_seconds", "test_acc")))


if __name__ == "__main__":
    main()
