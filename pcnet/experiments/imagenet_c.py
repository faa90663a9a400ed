"""ImageNet-C at scale: the published folder when it is there (checked for completeness), otherwise the same
corruptions generated from an ImageNet-val / Imagenette-val ImageFolder with ``imagecorruptions-imaug`` (whose
constants are ImageNet-C's, right at 224 px), cached once with a manifest of sha256 sums.

Published layout: ``ROOT/<corruption>/<severity>/<wnid>/*.JPEG`` (Hendrycks & Dietterich 2019).
Generated cache: ``CACHE/<key>/<corruption>_<severity>.pt`` (uint8 (N, 3, H, W)) and ``CACHE/<key>/MANIFEST.json``;
``key`` hashes the clean folder's file list, the image size and the seed.
"""
from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import torch
from torch.utils.data import Dataset

from .corruptions import ALL, COMMON, SEVERITIES
from .files import atomic_path, existing, sha256_file, write_text_atomic

__all__ = ["ALEXNET_ERROR", "check_imagenet_c", "published_imagenet_c", "GeneratedImageNetC", "generate_imagenet_c",
           "accuracy_grid", "alexnet_ce"]

# AlexNet's top-1 error on ImageNet-C, averaged over the five severities, for the 15 common corruptions: the
# normalisers of Hendrycks & Dietterich's mCE (ICLR 2019, "Benchmarking neural network robustness to common
# corruptions and perturbations", sec. 3 and their appendix table of AlexNet's errors). Transcribed from
# google-research/augmix, imagenet.py (ALEXNET_ERR, "Raw AlexNet errors taken from
# https://github.com/hendrycks/robustness"), in its order, which is COMMON's; e.g. gaussian_noise 0.886428 is the
# mean of AlexNet's per-severity errors 0.69528, 0.82542, 0.93554, 0.98138, 0.99452. Hendrycks & Dietterich define
# the mCE on these 15 only: the 4 extra corruptions (speckle noise, Gaussian blur, spatter, saturate) have no
# published AlexNet error, so they enter only the two relative mCE definitions.
ALEXNET_ERROR = dict(zip(COMMON, (0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816,
                                  0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500)))


def _has_images(folder: pathlib.Path) -> bool:
    return folder.is_dir() and any(c.is_dir() and any(c.iterdir()) for c in folder.iterdir())


def check_imagenet_c(root, *, names=COMMON, severities=SEVERITIES) -> pathlib.Path:
    """Check that ``root`` holds every ``names`` x ``severities`` folder with class sub-folders of images."""
    root = existing(root, kind="dir", what="ImageNet-C root", fix=f"download it with pcnet.experiments."
                    f"corruptions.download_imagenet_c({str(root)!r}), or generate the corruptions from a validation "
                    f"folder with generate_imagenet_c(...)")
    missing = [f"{n}/{s}" for n in names for s in severities if not _has_images(root / n / str(s))]
    if missing:
        raise ValueError(f"ImageNet-C at {root} lacks {len(missing)} corruption/severity folders with images, e.g. "
                         f"{missing[:5]}; download the missing families (download_imagenet_c), pass only the "
                         f"names=/severities= you have, or generate them with generate_imagenet_c(...)")
    return root


def published_imagenet_c(root, *, transform, names=COMMON, severities=SEVERITIES) -> dict:
    """{(name, severity): ImageFolder} of the published ImageNet-C at ``root`` (checked complete first)."""
    from .corruptions import load_imagenet_c

    check_imagenet_c(root, names=names, severities=severities)
    return {(n, s): load_imagenet_c(root, name=n, severity=s, transform=transform) for n in names for s in severities}


def accuracy_grid(net, sets: dict, *, timesteps: int, batch_size: int = 64, workers: int = 4,
                  feedback: str = "prediction", progress: bool = True) -> torch.Tensor:
    """Accuracy per corruption, severity and timestep, (C, S, T+1), of ``sets`` {(name, severity): dataset}, in
    batches of ``batch_size`` on ``net``'s device (feed it to ``metrics.mce`` / ``metrics.normalised_mce``)."""
    from torch.utils.data import DataLoader

    from .evaluate import evaluate_dynamics

    names = list(dict.fromkeys(n for n, _ in sets))
    severities = list(dict.fromkeys(s for _, s in sets))
    pin = next(net.parameters()).device.type == "cuda"
    rows = []
    for n in names:
        loaders = [DataLoader(sets[n, s], batch_size=batch_size, num_workers=workers, pin_memory=pin) for s in severities]
        rows.append(torch.stack([evaluate_dynamics(net, dl, timesteps=timesteps, feedback=feedback,
                                                   progress=progress).accuracy for dl in loaders]))  # (S, T+1)
    return torch.stack(rows)  # (C, S, T+1)


def _cache_key(dataset, *, size: int, seed: int) -> str:
    digest = hashlib.sha256(json.dumps([size, seed, "imagecorruptions-imaug/ImageNet-C"]).encode())
    for path, label in dataset.samples:
        digest.update(f"{pathlib.Path(path).name}:{label};".encode())
    return digest.hexdigest()[:16]


def _corrupt_all(clean: torch.Tensor, *, name: str, severity: int, seed: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> the corruption at ``severity``; image i seeded by (seed, name, severity, i)."""
    from imagecorruptions import corrupt

    out = torch.empty_like(clean)
    index = ALL.index(name)  # COMMON's indices are unchanged, so caches made before the extra four still hold
    for i, img in enumerate(clean):
        np.random.seed(np.random.SeedSequence([seed, index, severity, i]).generate_state(1)[0])  # the package's RNG
        y = corrupt(img.permute(1, 2, 0).numpy(), severity=severity, corruption_name=name)  # (H, W, 3)
        out[i] = torch.from_numpy(np.ascontiguousarray(np.clip(y, 0, 255)).astype(np.uint8)).permute(2, 0, 1)
    return out


class GeneratedImageNetC(Dataset):
    """(image float (3, H, W) in [0, 1], label) of one generated corruption/severity."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float() / 255, int(self.labels[i])


def _load_or_make(folder: pathlib.Path, manifest: dict, clean, *, name, severity, seed) -> torch.Tensor:
    path = folder / f"{name}_{severity}.pt"
    entry = manifest.get(path.name)
    if path.exists() and entry and entry == sha256_file(path):
        return torch.load(path, weights_only=True)
    images = _corrupt_all(clean, name=name, severity=severity, seed=seed)
    with atomic_path(path) as tmp:
        torch.save(images, tmp)
    manifest[path.name] = sha256_file(path)
    return images


def generate_imagenet_c(val_folder, *, names=ALL, severities=SEVERITIES, size: int = 224, seed: int = 0,
                        limit: int | None = None, indices=None, cache_dir=None, progress: bool = True) -> dict:
    """ImageNet-C corruptions of the resized, centre-cropped images of ``val_folder`` (an ImageFolder), made once.

    Returns {(name, severity): GeneratedImageNetC}. ``limit`` keeps the first images (a fixed subset), ``indices``
    these images of the folder (e.g. a class-mixed random subset; applied before ``limit``). A cached
    file whose sha256 differs from the manifest is regenerated.
    """
    from torchvision import transforms
    from tqdm.auto import tqdm

    from .train_scale import image_folder

    to_uint8 = transforms.Compose([transforms.Resize(int(round(size * 256 / 224))), transforms.CenterCrop(size),
                                   transforms.PILToTensor()])
    dataset = image_folder(val_folder, transform=to_uint8)
    if indices is not None:
        dataset.samples = [dataset.samples[int(i)] for i in indices]
    if limit is not None:
        dataset.samples = dataset.samples[:limit]
    bad = [n for n in names if n not in ALL] + [s for s in severities if s not in SEVERITIES]
    if bad:
        raise ValueError(f"unknown corruptions or severities {bad}; use names from {ALL} (the 15 common ones and the "
                         f"4 extra) and severities 1..5")
    if cache_dir is None:
        from .data import DATA_DIR
        cache_dir = DATA_DIR / "cache" / "imagenet_c"
    folder = pathlib.Path(cache_dir) / _cache_key(dataset, size=size, seed=seed)
    manifest_path = folder / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    clean = torch.stack([dataset[i][0] for i in range(len(dataset))])  # (N, 3, size, size) uint8
    labels = torch.tensor([label for _, label in dataset.samples])  # (N,)
    out = {}
    for name, severity in tqdm([(n, s) for n in names for s in severities], desc="ImageNet-C", disable=not progress):
        out[name, severity] = GeneratedImageNetC(_load_or_make(folder, manifest, clean, name=name,
                                                               severity=severity, seed=seed), labels)
        write_text_atomic(manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out


def alexnet_ce(correct: torch.Tensor, names) -> torch.Tensor:
    """Hendrycks & Dietterich's AlexNet-normalised corruption errors from per-image correctness (..., C, S, T+1, n)
    of the corruptions ``names``: CE_c(t) = (mean over severities of the error) / ``ALEXNET_ERROR[c]``, for the
    common corruptions only (the extra four have no AlexNet error); returns (..., C_common, T+1); their mean over
    corruptions is the mCE (1 = AlexNet's robustness)."""
    names = list(names)
    if len(names) != correct.shape[-4]:
        raise ValueError(f"{len(names)} names for {correct.shape[-4]} corruptions in correct {tuple(correct.shape)}; "
                         f"pass the names in the order of the corruption axis")
    keep = [i for i, n in enumerate(names) if n in ALEXNET_ERROR]
    if not keep:
        raise ValueError(f"none of {names} has a published AlexNet error; the AlexNet-normalised mCE needs some of "
                         f"the 15 common corruptions {COMMON}")
    error = 1 - correct[..., keep, :, :, :].float().mean(-1).mean(-2)  # (..., C_common, T+1)
    alexnet = torch.tensor([ALEXNET_ERROR[names[i]] for i in keep], dtype=error.dtype)  # (C_common,)
    return error / alexnet[:, None]
