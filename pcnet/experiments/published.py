"""The published CIFAR-10-C and ImageNet-C sets (Hendrycks & Dietterich 2019): download with a pinned MD5 and a
progress bar, then load. Names are validated before they become paths."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .corruption_names import COMMON, SEVERITIES
from .corruption_names import check as _check, check_names
from .download import fetch
from .files import existing, file_digest

CIFAR10_C_URL = "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar"
IMAGENET_C_URLS = {f: f"https://zenodo.org/records/2235448/files/{f}.tar"
                   for f in ("blur", "digital", "extra", "noise", "weather")}
# MD5 sums published with the Zenodo records 2535967 and 2235448 (Zenodo lists MD5 only); checked before extracting.
ARCHIVE_MD5 = {"CIFAR-10-C.tar": "56bf5dcef84df0e2308c6dcbcbbd8499",
               "blur.tar": "2d8e81fdd8e07fef67b9334fa635e45c", "digital.tar": "89157860d7b10d5797849337ca2e5c03",
               "extra.tar": "d492dfba5fc162d8ec2c3cd8ee672984", "noise.tar": "e80562d7f6c3f8834afb1ecf27252745",
               "weather.tar": "33ffea4db4d93fe4a428c40a6ce0c25d"}


def load_cifar10_c(root: str | os.PathLike, *, names=COMMON, severities=SEVERITIES) -> dict:
    """Load the published CIFAR-10-C ``.npy`` files from ``root`` (a folder holding ``labels.npy`` and
    ``<name>.npy``; each file stacks severities 1..5 of the 10,000 test images). Same dict as ``corrupted_set``
    with uint8 images (S, N, 3, 32, 32)."""
    root = Path(root)
    names, severities = check_names(names, severities=severities)  # also keeps "../x" from the file system
    if not (root / "labels.npy").exists():
        raise FileNotFoundError(f"no CIFAR-10-C at {root} (expected labels.npy and <corruption>.npy). On a "
                                f"connected machine run pcnet.experiments.corruptions.download_cifar10_c({str(root)!r}) "
                                f"or fetch {CIFAR10_C_URL} and untar it there.")
    labels = torch.from_numpy(np.load(root / "labels.npy")[:10000].astype(np.int64))
    out = {}
    for name in names:
        arr = np.load(root / f"{name}.npy", mmap_mode="r").reshape(5, 10000, 32, 32, 3)
        out[name] = torch.from_numpy(np.ascontiguousarray(arr[[s - 1 for s in severities]])).permute(0, 1, 4, 2, 3)
    return {"images": out, "labels": labels, "severities": tuple(severities), "seconds": 0.0, "folder": str(root)}


def _download(url: str, root: Path) -> None:
    """Download ``url`` into ``root``, check its published MD5 and extract the tar there. A failed or mismatching
    download leaves nothing behind; an archive already present is checked again before extracting."""
    import tarfile
    root.mkdir(parents=True, exist_ok=True)
    tar = root / url.rsplit("/", 1)[-1]
    part = tar.with_name(tar.name + ".part")
    try:
        md5 = file_digest(tar, algorithm="md5") if tar.exists() else fetch(url, part, algorithm="md5")
    except OSError as err:
        part.unlink(missing_ok=True)  # nothing half-written is left behind
        raise RuntimeError(f"could not download {url} ({err}); this machine is offline? Copy the extracted "
                           f"folder to {root} instead.") from err
    if md5 != ARCHIVE_MD5[tar.name]:
        part.unlink(missing_ok=True), tar.unlink(missing_ok=True)
        raise RuntimeError(f"{tar.name} has MD5 {md5}, but Zenodo publishes {ARCHIVE_MD5[tar.name]}: a damaged or "
                           f"different file (deleted). Download it again, or fetch {url} by hand and check its MD5")
    if part.exists():
        os.replace(part, tar)
    with tarfile.open(tar) as t:
        t.extractall(root, filter="data")



def download_cifar10_c(root: str | os.PathLike) -> Path:
    """Download and extract CIFAR-10-C (2.9 GB) into ``root``; needs internet (e.g. Colab)."""
    _download(CIFAR10_C_URL, Path(root))
    return Path(root) / "CIFAR-10-C"


def download_imagenet_c(root: str | os.PathLike, *, families=tuple(IMAGENET_C_URLS)) -> Path:
    """Download and extract the ImageNet-C family archives (``noise``, ``blur``, ...; tens of GB) into ``root``."""
    for family in families:
        if family not in IMAGENET_C_URLS:
            raise ValueError(f"unknown ImageNet-C family {family!r}; choose from {tuple(IMAGENET_C_URLS)}")
        _download(IMAGENET_C_URLS[family], Path(root))
    return Path(root)


def load_imagenet_c(root: str | os.PathLike, *, name: str, severity: int, transform=None):
    """The published ImageNet-C folder ``root/<name>/<severity>/<wnid>/*.JPEG`` as a torchvision ImageFolder."""
    from torchvision.datasets import ImageFolder
    _check(name, severity)
    folder = existing(Path(root) / name / str(severity), kind="dir", what="ImageNet-C images:",
                      fix=f"on a connected machine run pcnet.experiments.corruptions.download_imagenet_c("
                          f"{str(root)!r}) (archives: {sorted(IMAGENET_C_URLS.values())})")
    return ImageFolder(str(folder), transform=transform)
