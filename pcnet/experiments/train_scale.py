"""Feedback training at scale: an ImageFolder through a DataLoader, mixed precision and channels-last on GPU,
exact resume, and several processes (GPUs) through torchrun + DistributedDataParallel::

    torchrun --nproc_per_node=N -m pcnet.experiments.train feedback --preset pvgg16 --data PATH --weights DEFAULT

``--data``: an ImageFolder (one sub-folder of images per class; with a ``train/`` sub-folder, as in ImageNet and
Imagenette, that one is used). ``--batch-size`` is the global batch: each of the N processes takes 1/N of it, so a
run gives the same decoders (up to floating-point summation order) for any N. Every sample's augmentation is
seeded by (seed, epoch, index) and the sampler's order by (seed, epoch), so a run resumed from its checkpoint
(written atomically every ``--save-every`` steps and after every epoch) continues exactly, with any N.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from .files import save_torch_atomic
from .schedule import lr_at
from .schedule import set_lr as _set_lr

__all__ = ["PRESETS", "Dist", "build_preset", "image_folder", "SeededAugment", "distributed_setup", "local_batch",
           "train_feedback_scale", "main"]

PRESETS = ("pvgg16", "pefficientnet_b0", "presnet18", "pshallow_cifar")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def build_preset(name: str, *, weights=None, image_size: int = 224, **kwargs):
    """A preset PredNet by name (``PRESETS``); ``pshallow_cifar`` is the tiny 32 px network (weights=None only)."""
    from . import models, zoo

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; use one of {list(PRESETS)}")
    if name != "pshallow_cifar":
        return getattr(zoo, name)(weights=weights, image_size=image_size, **kwargs)
    if image_size != 32 or weights is not None:
        raise ValueError("pshallow_cifar is an untrained 32 px network: pass --image-size 32 --weights none")
    net = models.pshallow_cifar(**kwargs)
    net.meta = {"preset": name, "crop": 32, "resize": 32, "image_size": 32, "interpolation": "bilinear"}
    return net


def _check_image_folder(root: pathlib.Path) -> pathlib.Path:
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root} is not a folder; pass an ImageFolder: one sub-folder per class, "
                                f"e.g. PATH/n01440764/image.JPEG (ImageNet or Imagenette, whose train/ is used)")
    if (root / "train").is_dir():
        root = root / "train"
    classes = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    loose = [f.name for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES][:3]
    if not classes or not any(f.suffix.lower() in IMAGE_SUFFIXES for d in classes for f in d.iterdir()):
        raise ValueError(f"--data {root} is not an ImageFolder: it needs one sub-folder of images per class "
                         f"(found {len(classes)} sub-folders{', and loose images ' + str(loose) if loose else ''}); "
                         f"move the images into class folders, e.g. {root}/CLASS/{loose[0] if loose else 'image.jpg'}")
    return root


def image_folder(path, *, transform):
    """torchvision ImageFolder at ``path`` (its ``train/`` when there is one), after checking the layout."""
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(_check_image_folder(pathlib.Path(path).expanduser())), transform=transform)


class SeededAugment(Dataset):
    """Images of ``dataset`` (labels dropped) with each sample's random transform seeded by (seed, epoch, index):
    the same augmentation for any number of processes or workers, and after a resume."""

    def __init__(self, dataset, *, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            return self.dataset[index][0]  # (C, H, W)


@dataclasses.dataclass
class Dist:
    """This process's place in the run: rank, world size, device, backend (None for a single process)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None


def distributed_setup(*, backend: str = "auto", device: str | None = None) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK); a single process without it.

    ``backend``: "nccl" (GPUs), "gloo" (CPU) or "auto" (nccl when CUDA is available, else gloo).
    """
    if backend not in ("auto", "nccl", "gloo"):
        raise ValueError(f"backend must be 'auto', 'nccl' or 'gloo', got {backend!r}")
    cuda = torch.cuda.is_available()
    if backend == "nccl" and not cuda:
        raise RuntimeError("backend 'nccl' needs CUDA GPUs, but torch.cuda.is_available() is False here; pass "
                           "--backend gloo to train on CPUs, or run on a GPU machine")
    backend = ("nccl" if cuda else "gloo") if backend == "auto" else backend
    world, rank, local = (int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    use_cuda = cuda and backend == "nccl" if device is None else str(device).startswith("cuda")
    dev = torch.device(f"cuda:{local}" if use_cuda and device is None else (device or "cpu"))
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local, device=dev, backend=backend if world > 1 else None)


def local_batch(batch_size: int, world: int) -> int:
    """Each process's share of the global batch; it must divide evenly."""
    if batch_size % world:
        raise ValueError(f"--batch-size {batch_size} is not divisible by the number of processes {world} "
                         f"(torchrun --nproc_per_node); pass a multiple of {world}, e.g. {world * max(1, batch_size // world)}")
    return batch_size // world


class _ResumableSampler(DistributedSampler):
    """DistributedSampler that skips the first ``start`` indices of this rank's epoch order (resume mid-epoch)."""
    start = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])


class _Objective(nn.Module):
    """The feedback loss as a module whose only parameters are the decoders (what DistributedDataParallel syncs)."""

    def __init__(self, net):
        super().__init__()
        self.decoders = net.decoders
        self.__dict__["net"] = net  # not a submodule: the frozen backbone stays out of DDP

    def forward(self, x):
        import pcnet

        return pcnet.feedback_loss(self.net, x)


def _amp_dtype(amp: str, device: torch.device):
    if amp not in ("auto", "on", "off"):
        raise ValueError(f"amp must be 'auto', 'on' or 'off', got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ValueError("amp='on' needs a CUDA device; pass --amp off (or auto) on CPU")
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _resume(path, config: dict, objects: dict, device) -> tuple[int, dict | None]:
    if path is None or not pathlib.Path(path).exists():
        return 0, None
    state = torch.load(path, map_location=device, weights_only=True)
    if state["config"] != config:
        raise ValueError(f"checkpoint {path} was made with {state['config']}, not {config}; delete it to start "
                         f"afresh or pass the same options to resume")
    for key, obj in objects.items():
        obj.load_state_dict(state[key])
    return state["step"], state["history"]


def _save(path, dist: Dist, *, config, step, history, objects) -> None:
    if path is not None and dist.rank == 0:
        save_torch_atomic({"config": config, "step": step, "history": history,
                           **{k: o.state_dict() for k, o in objects.items()}}, pathlib.Path(path))
    if dist.world > 1:
        torch.distributed.barrier()


def _loader(data: SeededAugment, sampler: _ResumableSampler, *, epoch, start, local, workers, dist: Dist, seed):
    data.set_epoch(epoch)
    sampler.set_epoch(epoch)
    sampler.start = start * local
    return DataLoader(data, batch_size=local, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=dist.device.type == "cuda", generator=torch.Generator().manual_seed(seed + epoch))


def _step(loss_fn, net, x, optimizer, scaler, *, amp, dist: Dist) -> torch.Tensor:
    """One optimiser step on the global batch; returns the per-layer losses averaged over the processes (N,)."""
    net.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(dist.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        total, per_layer = loss_fn(x)
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    if dist.world > 1:
        torch.distributed.all_reduce(per_layer)
        per_layer = per_layer / dist.world
    return per_layer.float().cpu()


def train_feedback_scale(net, dataset, *, epochs: int, batch_size: int, lr: float, seed: int, checkpoint=None,
                         workers: int = 4, amp: str = "auto", save_every: int | None = None,
                         max_steps: int | None = None, dist: Dist | None = None, progress: bool = True) -> dict:
    """Train the decoders of ``net`` on eq-feedback-loss (Adam, ``lr_at`` schedule) over ``dataset`` (images in
    [0, 1], e.g. :func:`image_folder`), ``batch_size`` images per step across all processes of ``dist``.

    ``max_steps`` stops early (after saving the checkpoint), e.g. to split a run. Returns the history:
    ``step_loss`` (per step and layer), ``epoch_loss``, ``seconds``, ``images``, ``total_steps``.
    """
    dist = dist or Dist()
    local = local_batch(batch_size, dist.world)
    data = SeededAugment(dataset, seed=seed)
    sampler = _ResumableSampler(data, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=seed, drop_last=True)
    per_epoch = len(sampler) // local
    if per_epoch == 0:
        raise ValueError(f"{len(dataset)} images give no full batch of {batch_size}; lower --batch-size")
    net.to(dist.device)
    if dist.device.type == "cuda":
        net.to(memory_format=torch.channels_last)
    amp_dtype = _amp_dtype(amp, dist.device)
    optimizer = torch.optim.Adam(net.decoders.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=amp_dtype == torch.float16)
    config = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, n=len(dataset))
    objects = {"decoders": net.decoders, "optimizer": optimizer, "scaler": scaler}
    start, history = _resume(checkpoint, config, objects, dist.device)
    history = history or {"step_loss": [], "epoch_loss": [], "seconds": [], "images": 0}
    loss_fn = _Objective(net)
    if dist.world > 1:
        ids = [dist.device] if dist.device.type == "cuda" else None
        loss_fn = nn.parallel.DistributedDataParallel(loss_fn, device_ids=ids)
    run = dict(net=net, loss_fn=loss_fn, optimizer=optimizer, scaler=scaler, amp=amp_dtype, dist=dist, sampler=sampler,
               data=data, local=local, per_epoch=per_epoch, total=epochs * per_epoch, lr=lr, seed=seed, workers=workers,
               checkpoint=checkpoint, save_every=save_every, config=config, objects=objects, progress=progress)
    history["total_steps"] = run["total"]
    stop = run["total"] if max_steps is None else min(run["total"], max_steps)
    step = start
    while step < stop:
        step = _epoch(run, history, step=step, stop=stop)
    net.eval()
    return history


def _epoch(run: dict, history: dict, *, step: int, stop: int) -> int:
    """Steps from ``step`` to the end of its epoch (or ``stop``); saves the checkpoint; returns the next step."""
    dist, per_epoch = run["dist"], run["per_epoch"]
    epoch, within = divmod(step, per_epoch)
    loader = _loader(run["data"], run["sampler"], epoch=epoch, start=within, local=run["local"],
                     workers=run["workers"], dist=dist, seed=run["seed"])
    t0, losses = time.perf_counter(), []
    end = min(stop, (epoch + 1) * per_epoch)
    bar = tqdm(total=end - step, desc=f"feedback epoch {epoch + 1}/{run['total'] // per_epoch}",
               disable=not run["progress"] or dist.rank != 0)
    for x in loader:
        _set_lr(run["optimizer"], lr_at(step, run["total"], run["lr"]))  # eq-lr-schedule
        x = x.to(dist.device, non_blocking=True)  # (B/N, C, H, W)
        if dist.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        losses.append(_step(run["loss_fn"], run["net"], x, run["optimizer"], run["scaler"], amp=run["amp"], dist=dist))
        step += 1
        bar.update(1)
        history["step_loss"].append(losses[-1].tolist())
        history["images"] += run["local"] * dist.world
        if step == end or (run["save_every"] and step % run["save_every"] == 0):
            if step == (epoch + 1) * per_epoch:  # the whole epoch's steps, also those before a resume
                epoch_steps = torch.tensor(history["step_loss"][epoch * per_epoch:])  # (per_epoch, N)
                history["epoch_loss"].append(epoch_steps.mean(0).tolist())
                history["seconds"].append(time.perf_counter() - t0)
            _save(run["checkpoint"], dist, config=run["config"], step=step, history=history, objects=run["objects"])
        if step == end:
            break
    bar.close()
    return step


def _parser():
    import argparse

    p = argparse.ArgumentParser(prog="torchrun --nproc_per_node=N -m pcnet.experiments.train",
                                description=__doc__.split("::")[0])
    p.add_argument("what", choices=["feedback"])
    p.add_argument("--preset", required=True, choices=PRESETS)
    p.add_argument("--data", required=True, help="ImageFolder root (its train/ when present)")
    p.add_argument("--weights", default="DEFAULT", help="backbone weights; 'none' for an untrained backbone")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64, help="global batch, split over the processes")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers per process")
    p.add_argument("--augment", action="store_true", help="random resized crops and flips instead of centre crops")
    p.add_argument("--amp", default="auto", choices=["auto", "on", "off"], help="mixed precision (GPU only)")
    p.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"])
    p.add_argument("--out", default=None, help="decoder weights (default DATA_DIR/cache/PRESET_feedback_seedS.pt)")
    p.add_argument("--checkpoint", default=None, help="resume file (default: OUT with suffix .ckpt)")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every this many steps")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (resume later)")
    return p


def main(argv=None) -> None:
    """CLI (see the module docstring); also reached by ``python -m pcnet.experiments.train feedback --data PATH``."""
    import sys

    from .data import DATA_DIR
    from .weights import save_weights
    from .zoo import preprocessing

    args = _parser().parse_args(argv)
    dist = distributed_setup(backend=args.backend)
    local_batch(args.batch_size, dist.world)  # fail before any work
    out = pathlib.Path(args.out or DATA_DIR / "cache" / f"{args.preset}_feedback_seed{args.seed}.pt")
    checkpoint = pathlib.Path(args.checkpoint) if args.checkpoint else out.with_suffix(".ckpt")
    torch.manual_seed(args.seed)  # the same initial decoders in every process
    weights = None if args.weights.lower() == "none" else args.weights
    net = build_preset(args.preset, weights=weights, image_size=args.image_size)
    dataset = image_folder(args.data, transform=preprocessing(net, train=args.augment))
    history = train_feedback_scale(net, dataset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                   seed=args.seed, checkpoint=checkpoint, workers=args.workers, amp=args.amp,
                                   save_every=args.save_every, max_steps=args.max_steps, dist=dist)
    finished = len(history["step_loss"]) == history["total_steps"]
    if dist.rank == 0 and finished:
        command = "torchrun -m pcnet.experiments.train " + " ".join(sys.argv[1:] if argv is None else argv)
        extra = {"options": vars(args), "world_size": dist.world, "backend": dist.backend, "meta": net.meta,
                 "images": history["images"], "epoch_loss": history["epoch_loss"]}
        sha = save_weights(out, net.decoders.state_dict(), command=command, seed=args.seed, extra=extra)
        checkpoint.unlink(missing_ok=True)
        print(f"saved {out} (sha256 {sha[:12]}) after {len(history['step_loss'])} steps on {dist.world} process(es)")
    elif dist.rank == 0:
        print(f"stopped after {len(history['step_loss'])} steps; resume with the same command "
              f"(checkpoint {checkpoint})")
    if dist.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
