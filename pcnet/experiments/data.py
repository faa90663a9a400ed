"""Data sources for the book: offline first, standard downloads where a network exists.

Offline (no internet needed):

- Fashion-MNIST (real photos, 60k/10k), from ``data/``, the Debian package ``dataset-fashion-mnist``,
  or torchvision's download, in that order; file contents are checked against fixed sha256 sums.
- ``natural_photos``: a few real photos shipped by scikit-image, matplotlib (and scikit-learn if installed).
- ``sample_images``: 20 labelled CIFAR-10 or ImageNet images shipped inside the ``foolbox`` wheel.

Connected machines (Colab): ``cifar10`` and ``imagenette`` download into ``DATA_DIR``;
``imagenet_folder`` reads an ImageNet-style folder the user already has.

Nothing happens at import: no downloads and no directories are created.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pathlib

import numpy as np
import torch
from torch.utils.data import Subset, TensorDataset

from .optional import require

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# <repo>/data in a checkout (the usual case: `pip install -e .`, Colab clone); ~/.cache/pcnet for a
# plain `pip install`; the environment variable PCNET_DATA overrides both.
_DEFAULT_DATA = (REPO_ROOT / "data" if (REPO_ROOT / "pyproject.toml").exists()
                 else pathlib.Path.home() / ".cache" / "pcnet")
DATA_DIR = pathlib.Path(os.environ.get("PCNET_DATA", _DEFAULT_DATA)).expanduser()
DEBIAN_FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# sha256 of the *decompressed* idx files (gzip headers differ between mirrors, contents do not).
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _read_idx(path: pathlib.Path) -> np.ndarray:
    """Read one (optionally gzipped) idx file, checking its content sha256."""
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError; a truncated stream is an EOFError
        raise RuntimeError(f"{path} cannot be read ({type(err).__name__}: {err}): the file is truncated or not "
                           f"gzip. Delete it and load again.") from err
    name = path.name.removesuffix(".gz")
    digest = hashlib.sha256(raw).hexdigest()
    if name in _FASHION_SHA256 and digest != _FASHION_SHA256[name]:
        raise RuntimeError(f"{path} has sha256 {digest} (of its decompressed content), expected "
                           f"{_FASHION_SHA256[name]}: the file is corrupt or not Fashion-MNIST. "
                           f"Delete it and load again.")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(folder: pathlib.Path, name: str) -> pathlib.Path | None:
    for candidate in (folder / (name + ".gz"), folder / name):
        if candidate.is_file():
            return candidate
    return None


def _fashion_candidates(root) -> list[pathlib.Path]:
    if root is not None:
        root = pathlib.Path(root).expanduser()
        return [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    return [DATA_DIR / "fashion-mnist", DATA_DIR / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST]


@functools.lru_cache(maxsize=4)
def _fashion_arrays(split: str, root_key: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    images_name, labels_name = _FASHION_FILES[split]
    for folder in _fashion_candidates(root_key):
        images, labels = _find_idx(folder, images_name), _find_idx(folder, labels_name)
        if images is not None and labels is not None:
            return _read_idx(images), _read_idx(labels), str(folder)
    download_root = pathlib.Path(root_key).expanduser() if root_key else DATA_DIR
    try:
        import torchvision
        torchvision.datasets.FashionMNIST(root=str(download_root), train=(split == "train"),
                                          download=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not available": explain the fix
        searched = ", ".join(str(p) for p in _fashion_candidates(root_key))
        raise RuntimeError(
            f"Fashion-MNIST ({split}) not found (looked in {searched}) and the download failed "
            f"({type(err).__name__}: {err}). Fix: on Debian/Ubuntu run "
            f"`sudo apt-get install -y dataset-fashion-mnist`, or on a connected machine run "
            f"`python -c \"import pcnet.experiments.data as d; d.fashion_mnist(split='{split}')\"` "
            f"to download it into {download_root}.") from err
    folder = download_root / "FashionMNIST" / "raw"
    return (_read_idx(_find_idx(folder, images_name)), _read_idx(_find_idx(folder, labels_name)),
            str(folder))


def fashion_mnist(*, split: str = "train", root=None) -> TensorDataset:
    """Fashion-MNIST as a TensorDataset: images float32 (N,1,28,28) in [0,1], labels int64 (N,).

    Looks in ``root`` (if given) or ``DATA_DIR/fashion-mnist``, ``DATA_DIR/FashionMNIST/raw``, then
    ``/usr/share/datasets/fashion-mnist`` (Debian package), then downloads with torchvision.
    """
    _check_split(split)
    images, labels, _ = _fashion_arrays(split, None if root is None else str(root))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N,1,28,28)
    y = torch.from_numpy(labels.astype(np.int64))  # (N,)
    return TensorDataset(x, y)


def fashion_mnist_source(*, split: str = "train", root=None) -> str:
    """The folder ``fashion_mnist`` reads from (for printing provenance in the book)."""
    _check_split(split)
    return _fashion_arrays(split, None if root is None else str(root))[2]


def split_train_val(dataset, *, val_size: int, seed: int) -> tuple[Subset, Subset]:
    """Deterministic random split into (train, val) Subsets; the same seed gives the same split."""
    n = len(dataset)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1} for a dataset of {n}, got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[val_size:]), Subset(dataset, order[:val_size])


def _offline_hint(name: str, root: pathlib.Path, err: Exception, manual: str) -> RuntimeError:
    return RuntimeError(
        f"{name} is not in {root} and could not be downloaded ({type(err).__name__}: {err}). "
        f"Fix: run on a machine with internet access (e.g. Colab) with download=True, or {manual}. "
        f"Offline, the book's default data is pcnet.experiments.data.fashion_mnist().")


def cifar10(*, split: str = "train", root=None, download: bool = True):
    """CIFAR-10 (torchvision) with images float [0,1] of shape (3,32,32); downloads into DATA_DIR/cifar10."""
    _check_split(split)
    import torchvision
    from torchvision import transforms
    root = pathlib.Path(root).expanduser() if root is not None else DATA_DIR / "cifar10"
    try:
        return torchvision.datasets.CIFAR10(root=str(root), train=(split == "train"),
                                            download=download, transform=transforms.ToTensor())
    except Exception as err:  # noqa: BLE001
        raise _offline_hint("CIFAR-10", root, err,
                            "copy cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/) "
                            f"into {root}") from err


def _imagenet_transform(size: int):
    from torchvision import transforms
    return transforms.Compose([transforms.Resize(int(round(size * 256 / 224))),
                               transforms.CenterCrop(size), transforms.ToTensor()])


def imagenet_folder(path, *, size: int = 224):
    """An ImageNet-style folder (one sub-folder per class, e.g. ILSVRC val sorted by wnid) as ImageFolder.

    Images are resized and centre-cropped to (3,size,size), float [0,1] (normalisation is inside
    the models returned by this module)."""
    from torchvision.datasets import ImageFolder
    from pcnet.experiments.files import existing
    path = existing(path, kind="dir", what="image folder", fix="pass an ImageNet-style folder (one sub-folder "
                    "per class), or use pcnet.experiments.data.imagenette()")
    return ImageFolder(str(path), transform=_imagenet_transform(size))


def imagenette(*, split: str = "val", root=None, download: bool = True, size: int = 224):
    """Imagenette (10 easy ImageNet classes, torchvision) resized/cropped to (3,size,size) in [0,1].

    Note: labels are 0..9 in Imagenette's order; ``IMAGENETTE_IMAGENET_INDEX`` maps them to ImageNet class indices."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    import torchvision
    root = pathlib.Path(root).expanduser() if root is not None else DATA_DIR / "imagenette"
    if download:
        root.mkdir(parents=True, exist_ok=True)
    try:
        return torchvision.datasets.Imagenette(root=str(root), split=split, size="320px",
                                               download=download, transform=_imagenet_transform(size))
    except Exception as err:  # noqa: BLE001
        raise _offline_hint("Imagenette", root, err,
                            f"extract imagenette2-320.tgz into {root}") from err


# ImageNet class indices of the ten Imagenette classes, in Imagenette's label order.
IMAGENETTE_IMAGENET_INDEX = (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)


def _square_resize(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8/float HxW[xC] image -> float (3,size,size) in [0,1] by centre-crop and antialiased resize."""
    img = torch.from_numpy(np.asarray(image, dtype=np.float32))
    if img.max() > 1.0:
        img = img / 255.0
    if img.ndim == 2:
        img = img.unsqueeze(-1).expand(-1, -1, 3)
    img = img[..., :3].permute(2, 0, 1)  # (3,H,W)
    h, w = img.shape[1:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = img[:, top:top + s, left:left + s].unsqueeze(0)  # (1,3,s,s)
    img = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear",
                                          antialias=True, align_corners=False)
    return img[0].clamp(0.0, 1.0)  # (3,size,size)


def natural_photo_names() -> list[str]:
    """Names of the photos returned by ``natural_photos`` (in order)."""
    return [name for name, _ in _photo_loaders()]


def _photo_loaders():
    sk = require("skimage.data", purpose="data.natural_photos")
    loaders = [(n, getattr(sk, n)) for n in ("astronaut", "chelsea", "coffee", "rocket")]
    loaders.append(("motorcycle", lambda: sk.stereo_motorcycle()[0]))
    loaders += [(n, getattr(sk, n)) for n in ("camera", "coins", "moon", "brick", "grass", "gravel")]
    cbook = require("matplotlib.cbook", purpose="data.natural_photos")
    loaders.append(("grace_hopper", lambda: __import__("matplotlib.image").image.imread(
        cbook.get_sample_data("grace_hopper.jpg"))))
    try:
        from sklearn.datasets import load_sample_images
        for i, name in enumerate(("china", "flower")):
            loaders.append((name, lambda i=i: load_sample_images().images[i]))
    except ImportError:
        pass
    return loaders


def natural_photos(*, size: int = 224) -> torch.Tensor:
    """Real photos shipped by scikit-image and matplotlib (and scikit-learn if installed).

    Returns float (N,3,size,size) in [0,1]; grey photos are repeated over the 3 channels."""
    return torch.stack([_square_resize(load(), size) for _, load in _photo_loaders()])


def sample_images(*, dataset: str = "cifar10", size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 labelled sample images inside the foolbox wheel: ('cifar10' | 'imagenet').

    Returns (images float (20,3,size,size) in [0,1], labels int64 (20,)), centre-cropped and resized
    to ``size`` (default 32 for CIFAR-10, 224 for ImageNet)."""
    if dataset not in ("cifar10", "imagenet"):
        raise ValueError(f"dataset must be 'cifar10' or 'imagenet', got {dataset!r}")
    import importlib.util
    from PIL import Image
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise RuntimeError("sample_images needs the foolbox wheel: pip install --no-deps foolbox")
    folder = pathlib.Path(spec.origin).parent / "data"
    files = sorted(folder.glob(f"{dataset}_*"))
    images, labels = [], []
    for f in files:
        arr = np.asarray(Image.open(f).convert("RGB"))
        img = _square_resize(arr, size or (32 if dataset == "cifar10" else 224))
        images.append(img)
        labels.append(int(f.stem.split("_")[-1]))
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names (shipped inside torchvision, no download)."""
    from torchvision.models import ResNet18_Weights
    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def as_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All (images, labels) of a dataset as two tensors; fast for TensorDataset and its Subsets."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]
    if isinstance(dataset, torch.utils.data.Subset):
        x, y = as_tensors(dataset.dataset)
        index = torch.as_tensor(dataset.indices, dtype=torch.long)  # (n,)
        return x[index], y[index]
    loader = torch.utils.data.DataLoader(dataset, batch_size=1000)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys).long()


def images_of(data, *, what: str = "train_set") -> torch.Tensor:
    """All images of ``data`` as one tensor (N, C, H, W); labels, if any, are ignored.

    ``data``: a tensor (N, C, H, W); a dataset whose items are an image (C, H, W) or a tuple whose first element
    is one (``TensorDataset(images)``, ``TensorDataset(images, labels)``, an ImageFolder); or a DataLoader over
    either, read once (its batches are concatenated; its batch size and order do not matter to the caller).
    """
    def first(item):
        return item[0] if isinstance(item, (tuple, list)) and len(item) > 0 else item

    fix = (f"pass a tensor of images (N, C, H, W), a Dataset whose items are an image or (image, label), or a "
           f"DataLoader over one")
    if isinstance(data, torch.Tensor):
        images = data
    elif isinstance(data, TensorDataset):
        images = data.tensors[0]
    elif isinstance(data, Subset) and isinstance(data.dataset, (TensorDataset, Subset)):
        images = images_of(data.dataset, what=what)[torch.as_tensor(data.indices, dtype=torch.long)]  # (n,C,H,W)
    elif isinstance(data, torch.utils.data.DataLoader):
        images = [first(batch) for batch in data]
        if not images or not all(isinstance(b, torch.Tensor) for b in images):
            raise TypeError(f"{what}: the DataLoader gave {type(images[0]).__name__ if images else 'no batches'}, "
                            f"not image tensors; {fix}")
        images = torch.cat(images)  # (N, C, H, W)
    elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        if len(data) == 0:
            raise ValueError(f"{what} is empty; pass at least one image")
        items = [first(data[i]) for i in range(len(data))]
        if not all(isinstance(i, torch.Tensor) for i in items):
            raise TypeError(f"{what}: its items are {type(items[0]).__name__}, not image tensors (add a "
                            f"transforms.ToTensor()); {fix}")
        images = torch.stack(items)  # (N, C, H, W)
    else:
        raise TypeError(f"{what} must be images, got {type(data).__name__}; {fix}")
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"{what} must hold at least one image of shape (C, H, W), got images of shape "
                         f"{tuple(images.shape)}; {fix} (a single image: x.unsqueeze(0))")
    return images


def gratings(n: int, *, seed: int = 0, size: int = 32, classes: int = 10) -> TensorDataset:
    """``n`` synthetic labelled colour images (n, 3, size, size) in [0, 1], made offline (no download).

    Class k is a sinusoidal grating at orientation k * 180 / ``classes`` degrees, with a random phase, 2 to 4
    cycles per image, a random colour and contrast, plus pixel noise (sigma 0.05): a stand-in for your own data
    (the appendix "Your own network" trains a ResNet-18 on it). Deterministic given ``seed``.
    """
    import math

    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or size < 4 or classes < 2:
        raise ValueError(f"gratings needs n >= 1 images of size >= 4 and classes >= 2, got n={n!r}, size={size!r}, "
                         f"classes={classes!r}")
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)  # (n,)
    theta = y.double() * math.pi / classes  # (n,) orientation of each class
    cycles = 2 + 2 * torch.rand(n, generator=g, dtype=torch.float64)  # (n,)
    phase = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)  # (n,)
    colour = 0.2 + 0.8 * torch.rand(n, 3, generator=g, dtype=torch.float64)  # (n, 3)
    contrast = 0.3 + 0.2 * torch.rand(n, generator=g, dtype=torch.float64)  # (n,)
    axis = torch.linspace(0, 1, size, dtype=torch.float64)  # (size,)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")  # (size, size) each
    along = cols * theta.cos()[:, None, None] + rows * theta.sin()[:, None, None]  # (n, size, size)
    wave = torch.sin(2 * math.pi * cycles[:, None, None] * along + phase[:, None, None])  # (n, size, size)
    images = 0.5 + (contrast[:, None] * colour)[:, :, None, None] * wave[:, None]  # (n, 3, size, size)
    images = images + 0.05 * torch.randn(images.shape, generator=g, dtype=torch.float64)  # (n, 3, size, size)
    return TensorDataset(images.clamp(0, 1).float(), y)
