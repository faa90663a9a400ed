"""Common corruptions (Hendrycks & Dietterich 2019) for small grayscale images, plus CIFAR-10-C / ImageNet-C loaders.

The 15 benchmark corruptions and the 4 extra ones are re-implemented here for single-channel images with the
**CIFAR-10-C severity constants** (``CIFAR10C_CONSTANTS``; the maintained ``imagecorruptions-imaug`` package
carries the ImageNet-C constants, far too strong for 32-pixel images). Helpers that have no constants
(``disk``, ``plasma_fractal``, the shift-kernel ``_motion_blur``, the frost textures) come from
``imagecorruptions-imaug``. A 28x28 image is zero-padded to 32x32 (Fashion-MNIST backgrounds are 0), so every
constant acts at the image size it was chosen for, and cropped back. Grayscale is handled natively: noise is
drawn once per pixel (replicating to RGB and averaging would shrink noise by sqrt(3)); coloured overlays
(frost, spatter, saturate) are mapped to gray with ITU-R 601 luma. Image statistics (contrast's mean, fog's
maximum) are taken over the padded 32x32 image. Deviations from the CIFAR-10-C script:
motion blur (and the streaks in snow) use the shift-kernel approximation of ImageMagick's motion blur that
``imagecorruptions`` uses; saturate on a gray image is the luma of the re-saturated red hue, i.e. x(1-0.701 c1),
identity at severities 1-3. ``corrupt(..., constants="imagenet")`` swaps in the ImageNet-C constants of
``imagecorruptions`` (used in tests to check the deterministic corruptions against that package).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from .corruption_names import ALL, COMMON, EXTRA, FAMILIES, SEVERITIES  # noqa: F401 (public names, kept here)
from .corruption_names import check as _check, check_names
from .optional import require
from .files import locked, save_torch_atomic, sha256_file, write_text_atomic
# the published CIFAR-10-C / ImageNet-C sets live in published.py; their names stay available from here
from .published import (ARCHIVE_MD5, CIFAR10_C_URL, IMAGENET_C_URLS, download_cifar10_c,  # noqa: F401
                        download_imagenet_c, load_cifar10_c, load_imagenet_c)

# the book's extras this module needs (a missing one names its install command: experiments.optional)
cv2 = require("cv2", purpose="pcnet.experiments.corruptions")
Image = require("PIL.Image", purpose="pcnet.experiments.corruptions")
map_coordinates, scizoom = (getattr(require("scipy.ndimage", purpose="pcnet.experiments.corruptions"), f)
                            for f in ("map_coordinates", "zoom"))
gaussian = require("skimage.filters", purpose="pcnet.experiments.corruptions").gaussian

SIZE = 32  # the CIFAR-10-C constants are calibrated for 32x32 images

# CIFAR-10-C constants (Hendrycks & Dietterich, make_cifar_c.py), one entry per severity 1..5.
CIFAR10C_CONSTANTS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": tuple(tuple(np.arange(1, hi, 0.01)) for hi in (1.06, 1.11, 1.16, 1.21, 1.26)),
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "elastic_transform": tuple(tuple(SIZE * v for v in c) for c in
                               ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                                (0.1, 0.03, 0.03))),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}
# ImageNet-C constants as carried by imagecorruptions-imaug (only the corruptions without randomness, for tests).
IMAGENET_C_CONSTANTS = {
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    "gaussian_blur": (1, 2, 3, 4, 6), "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05), "jpeg_compression": (25, 18, 15, 10, 7),
}
_LUMA = np.array([0.2989, 0.5870, 0.1140])  # ITU-R 601, as imagecorruptions' rgb2gray


# ----------------------------------------------------------------------------- single-image operations
# Each takes x: float64 (32, 32) in [0, 1], the severity constant c and a numpy Generator; returns (32, 32).

@contextlib.contextmanager
def _legacy_seed(rng):
    """Seed numpy's global RNG (used by imagecorruptions helpers) from ``rng``; restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(int(rng.integers(2**31)))
    try:
        yield
    finally:
        np.random.set_state(state)


def _clipped_zoom(x, factor):
    """Zoom the centre of a square (H, W) array by ``factor`` and trim back to (H, W) around the centre."""
    h = x.shape[0]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    z = scizoom(x[top:top + ch, top:top + ch], factor, order=1)
    trim = (z.shape[0] - h) // 2
    return z[trim:trim + h, trim:trim + h]


def _motion(x, radius, sigma, angle):
    _motion_blur = require("imagecorruptions.corruptions", purpose="corruptions (motion blur, snow)")._motion_blur
    return _motion_blur(x, radius=radius, sigma=sigma, angle=angle)


def _glass(x, c, rng):
    sigma, delta, iters = c
    x = np.uint8(gaussian(x, sigma=sigma) * 255).astype(np.float64)
    n = x.shape[0]
    rows = range(n - delta, delta, -1)
    for _ in range(iters):  # locally shuffle pixels
        offsets = rng.integers(-delta, delta, size=(len(rows), len(rows), 2)).tolist()
        for h, row in zip(rows, offsets):
            for w, (dx, dy) in zip(rows, row):
                x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
    return gaussian(x / 255.0, sigma=sigma)


def _snow(x, c, rng):
    layer = rng.normal(loc=c[0], scale=c[1], size=x.shape)
    layer = _clipped_zoom(layer, c[2])
    layer[layer < c[3]] = 0
    layer = np.clip(layer, 0, 1).astype(np.float32)
    layer = _motion(layer, c[4], c[5], rng.uniform(-135, -45))
    layer = np.round(layer * 255) / 255.0
    x = c[6] * x + (1 - c[6]) * np.maximum(x, x * 1.5 + 0.5)  # the gray image is its own luma
    return x + layer + np.rot90(layer, k=2)


@functools.lru_cache(maxsize=None)
def _frost_texture(idx):
    """Frost texture ``idx`` of imagecorruptions, scaled by 0.2 as for CIFAR-10-C, as luma in [0, 1]."""
    import importlib.resources
    name = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"][idx]
    with importlib.resources.as_file(importlib.resources.files("imagecorruptions") / "frost" / name) as p:
        tex = cv2.imread(str(p))[..., ::-1]  # BGR -> RGB
    return cv2.resize(tex, (0, 0), fx=0.2, fy=0.2) @ _LUMA / 255.0


def _frost(x, c, rng):
    tex = _frost_texture(int(rng.integers(5)))  # as in make_cifar_c.py: the first five textures
    i, j = rng.integers(0, tex.shape[0] - x.shape[0]), rng.integers(0, tex.shape[1] - x.shape[1])
    return c[0] * x + c[1] * tex[i:i + x.shape[0], j:j + x.shape[1]]


def _fog(x, c, rng):
    plasma_fractal = require("imagecorruptions.corruptions", purpose="corruptions (fog)").plasma_fractal
    with _legacy_seed(rng):
        plasma = plasma_fractal(mapsize=x.shape[0], wibbledecay=c[1])
    top = x.max()
    return (x + c[0] * plasma) * top / (top + c[0])


def _elastic(x, c, rng):
    n = x.shape[0]
    centre, half = np.float32([n, n]) // 2, n // 3
    pts1 = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    pts2 = pts1 + rng.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    x = cv2.warpAffine(x.astype(np.float32), cv2.getAffineTransform(pts1, pts2), (n, n),
                       borderMode=cv2.BORDER_REFLECT_101)
    dx = gaussian(rng.uniform(-1, 1, size=x.shape), c[1], mode="reflect", truncate=3) * c[0]
    dy = gaussian(rng.uniform(-1, 1, size=x.shape), c[1], mode="reflect", truncate=3) * c[0]
    yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return map_coordinates(x, [yy + dy, xx + dx], order=1, mode="reflect")


def _pil(x, fn):
    img = Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255), mode="L")
    return np.asarray(fn(img), dtype=np.float64) / 255.0


def _jpeg(img, quality):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(quality))
    return Image.open(buf).convert("L")


def _pixelate(img, c):
    n = img.size[0]
    return img.resize((int(n * c), int(n * c)), Image.BOX).resize((n, n), Image.BOX)


def _spatter(x, c, rng):
    liquid = gaussian(rng.normal(loc=c[0], scale=c[1], size=x.shape), sigma=c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:  # water: pale turquoise (175, 238, 238) drops along edges of the liquid layer
        liquid = (liquid * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        m = liquid.astype(np.float32) * cv2.blur(dist, (3, 3)).astype(np.float32)
        m = m / m.max() * c[4] if m.max() > 0 else m
        return x + m * float(np.array([175, 238, 238]) @ _LUMA / 255.0)
    m = gaussian((liquid > c[3]).astype(np.float32), sigma=c[4])  # mud: brown (63, 42, 20) blotches
    m[m < 0.8] = 0
    return x * (1 - m) + m * float(np.array([63, 42, 20]) @ _LUMA / 255.0)


def _disk_blur(x, c):
    disk = require("imagecorruptions.corruptions", purpose="corruptions (defocus blur)").disk
    return cv2.filter2D(x, -1, disk(radius=c[0], alias_blur=c[1]).astype(np.float64))


_OPS = {
    "gaussian_noise": lambda x, c, r: x + r.normal(scale=c, size=x.shape),
    "shot_noise": lambda x, c, r: r.poisson(x * c) / float(c),
    "impulse_noise": lambda x, c, r: np.where(r.random(x.shape) < c, (r.random(x.shape) < 0.5) * 1.0, x),
    "defocus_blur": lambda x, c, r: _disk_blur(x, c),
    "glass_blur": _glass,
    "motion_blur": lambda x, c, r: _motion(x.astype(np.float32), c[0], c[1], r.uniform(-45, 45)),
    "zoom_blur": lambda x, c, r: (x + sum(_clipped_zoom(x, z) for z in c)) / (len(c) + 1),
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": lambda x, c, r: x + c,
    "contrast": lambda x, c, r: (x - x.mean()) * c + x.mean(),
    "elastic_transform": _elastic,
    "pixelate": lambda x, c, r: _pil(x, lambda im: _pixelate(im, c)),
    "jpeg_compression": lambda x, c, r: _pil(x, lambda im: _jpeg(im, c)),
    "speckle_noise": lambda x, c, r: x + x * r.normal(scale=c, size=x.shape),
    "gaussian_blur": lambda x, c, r: gaussian(x, sigma=c),
    "spatter": _spatter,
    "saturate": lambda x, c, r: x * (1 - 0.701 * float(np.clip(c[1], 0, 1))),  # see module docstring
}


# ----------------------------------------------------------------------------- public API
def corrupt(images: torch.Tensor, *, name: str, severity: int, seed: int = 0,
            constants: str = "cifar10") -> torch.Tensor:
    """Corrupt grayscale images ``(N, 1, H, W)`` float in [0, 1] (H, W <= 32); returns the same shape and dtype.

    Deterministic given ``seed``: image i draws from ``np.random.default_rng([seed, corruption, severity, i])``,
    so a subset gives the same corruption per image as the whole set. The output is quantised to 8 bits like
    the published CIFAR-10-C files.
    """
    _check(name, severity)
    table = {"cifar10": CIFAR10C_CONSTANTS, "imagenet": IMAGENET_C_CONSTANTS}.get(constants)
    if table is None or name not in table:
        raise ValueError(f"constants={constants!r} has no entry for {name!r}; use constants='cifar10'")
    check_images(images, what="corrupt")
    c = table[name][severity - 1]
    h, w = images.shape[-2:]
    top, left = (SIZE - h) // 2, (SIZE - w) // 2
    arr = images.detach().cpu().double().numpy()[:, 0]  # (N, H, W)
    out = np.empty_like(arr)
    idx = ALL.index(name)
    for i, img in enumerate(arr):
        rng = np.random.default_rng([seed, idx, severity, i])
        x = np.zeros((SIZE, SIZE))
        x[top:top + h, left:left + w] = img
        y = np.clip(np.asarray(_OPS[name](x, c, rng), dtype=np.float64), 0, 1)
        out[i] = y[top:top + h, left:left + w]
    out = np.round(out * 255) / 255  # 8-bit, like the published sets
    return torch.from_numpy(out).to(images.device, images.dtype)[:, None]  # (N, 1, H, W) where the input was


def check_images(images, *, what: str) -> None:
    """The rule for images entering the corruption helpers: a float tensor (N, 1, H<=32, W<=32) of finite pixels in
    [0, 1], checked in float32 or wider (a NaN passed the old min/max test and came out NaN, or black in the cache;
    uint8 {0, 1} images came out all zero)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{what}: images must be a torch.Tensor (N, 1, H, W), got {type(images).__name__}"
                        + ("; convert with torch.from_numpy(images)" if isinstance(images, np.ndarray) else ""))
    if not images.is_floating_point():
        raise TypeError(f"{what}: images must be float pixels in [0, 1], got dtype {images.dtype}; convert with "
                        f"images.float() / 255 (0..255 pixels)")
    if images.ndim != 4 or images.shape[1] != 1 or max(images.shape[-2:]) > SIZE:
        raise ValueError(f"expected grayscale images (N, 1, H<=32, W<=32), got {tuple(images.shape)}; for "
                         "CIFAR-10 / ImageNet use the published sets: load_cifar10_c / load_imagenet_c")
    finite = torch.isfinite(images)
    if not finite.all():
        raise ValueError(f"{what}: images have {int((~finite).sum())} NaN or infinite pixels; replace them (e.g. "
                         f"torch.nan_to_num(images)) or drop those images")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"{what}: images must lie in [0, 1] (un-normalised pixels), got min "
                         f"{float(images.min()):.3g}, max {float(images.max()):.3g}")


def _cache_manifest(path: Path) -> dict:
    """The corruption cache's manifest {name: entry}; {} when absent or unreadable (its files are then remade)."""
    try:
        manifest = json.loads(path.read_text()) if path.exists() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}  # a cache: regenerating is the fix, and the next write replaces the file
    return manifest if isinstance(manifest, dict) else {}


def _cached(path: Path, entry, severities):
    """The cached stack at ``path`` if its sha256 matches ``entry`` and it has ``severities``; else None."""
    if not (path.exists() and isinstance(entry, dict) and entry.get("sha256") == sha256_file(path)
            and set(severities) <= set(entry.get("severities", ()))):
        return None
    data = torch.load(path, weights_only=True)
    return data[[entry["severities"].index(s) for s in severities]]


def _store(path: Path, stack: torch.Tensor, manifest_path: Path, name: str, entry: dict) -> None:
    """Write ``stack`` and its manifest entry; the manifest is re-read under an inter-process lock, so several
    processes filling the same cache never lose each other's entries."""
    with locked(manifest_path):
        save_torch_atomic(stack, path)
        manifest = _cache_manifest(manifest_path)
        manifest[name] = {"sha256": sha256_file(path), **entry}
        write_text_atomic(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))


def corrupted_set(images: torch.Tensor, labels: torch.Tensor, *, names=ALL, severities=SEVERITIES, seed: int = 0,
                  cache_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """All ``names`` x ``severities`` corruptions of ``images`` (N, 1, H, W), cached on disk.

    Returns {"images": {name: uint8 Tensor (S, N, 1, H, W)}, "labels": (N,), "severities": tuple,
    "seconds": generation time of the sets not found in the cache}. Files live under ``cache_dir`` (default
    ``<DATA_DIR>/cache/corruptions``, git-ignored), keyed by a hash of the clean images, labels, seed and the
    constants, with a ``MANIFEST.json`` of sha256 sums checked on load (a mismatching file is regenerated).
    """
    from tqdm.auto import tqdm

    from .metrics import class_labels
    names, severities = check_names(names, severities=severities)
    check_images(images, what="corrupted_set")
    labels = class_labels(labels, n=images.shape[0])  # (N,)
    key = hashlib.sha256()
    key.update((images.detach().cpu().float().numpy() * 255).round().astype(np.uint8).tobytes())
    key.update(labels.cpu().numpy().astype(np.int64).tobytes())
    key.update(json.dumps([seed, repr(CIFAR10C_CONSTANTS)]).encode())
    if cache_dir is None:
        from pcnet.experiments.data import DATA_DIR
        cache_dir = Path(DATA_DIR) / "cache" / "corruptions"
    folder = Path(cache_dir) / f"{key.hexdigest()[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "MANIFEST.json"
    out, seconds = {}, 0.0
    for name in tqdm(names, desc="corruptions", disable=not progress):
        cached = _cached(folder / f"{name}.pt", _cache_manifest(manifest_path).get(name), severities)
        if cached is not None:
            out[name] = cached
            continue
        t0 = time.perf_counter()
        stack = torch.stack([(corrupt(images, name=name, severity=s, seed=seed) * 255).round().to(torch.uint8)
                             for s in severities])  # (S, N, 1, H, W)
        seconds += time.perf_counter() - t0
        entry = {"severities": list(severities), "seed": seed, "n_images": int(images.shape[0]),
                 "constants": "CIFAR-10-C"}
        _store(folder / f"{name}.pt", stack, manifest_path, name, entry)
        out[name] = stack
    return {"images": out, "labels": labels.clone(), "severities": severities, "seconds": seconds,
            "folder": str(folder)}


def stratified_subset(labels: torch.Tensor, *, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` examples of every class, chosen with ``seed``; sorted. Fixed across calls."""
    from .metrics import class_labels
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be an integer >= 1 (images per class), got {per_class!r}")
    labels = class_labels(labels)  # (N,)
    g = torch.Generator().manual_seed(seed)
    picks = []
    for k in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == k).flatten()
        if len(idx) < per_class:
            raise ValueError(f"class {k} has only {len(idx)} examples, fewer than per_class={per_class}")
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.sort(torch.cat(picks)).values
