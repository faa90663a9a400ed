"""pcnet.experiments.corruptions: shapes, ranges, determinism, severity ordering, caching, agreement with imagecorruptions."""
import json

import numpy as np
import pytest
import torch

from pcnet.experiments import corruptions as C


@pytest.fixture(scope="module")
def images():
    """Eight real Fashion-MNIST test images (N, 1, 28, 28) in [0, 1] and their labels."""
    try:
        from pcnet.experiments.data import fashion_mnist
        ds = fashion_mnist(split="test")
    except (ImportError, FileNotFoundError, RuntimeError) as err:
        pytest.skip(f"Fashion-MNIST unavailable: {err}")
    x, y = ds.tensors
    return x[:8].clone(), y[:8].clone()


def test_names_and_constants():
    assert len(C.COMMON) == 15 and len(C.EXTRA) == 4 and len(set(C.ALL)) == 19
    assert set(C.CIFAR10C_CONSTANTS) == set(C.ALL)
    assert all(len(v) == 5 for v in C.CIFAR10C_CONSTANTS.values())
    assert sum(len(v) for v in C.FAMILIES.values()) == 19


@pytest.mark.parametrize("name", C.ALL)
def test_shape_range_dtype_and_determinism(images, name):
    x, _ = images
    for s in (1, 5):
        out = C.corrupt(x, name=name, severity=s, seed=3)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        assert torch.equal(out * 255, (out * 255).round())  # 8-bit levels, like the published sets
        assert torch.equal(out, C.corrupt(x, name=name, severity=s, seed=3))  # deterministic
        # a sample is corrupted the same alone as inside a batch
        assert torch.equal(out[:1], C.corrupt(x[:1], name=name, severity=s, seed=3))
    assert not torch.equal(C.corrupt(x, name=name, severity=5, seed=3), x)  # severity 5 changes every set


RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
          "elastic_transform", "speckle_noise", "spatter")


@pytest.mark.parametrize("name", RANDOM)
def test_seed_changes_random_corruptions(images, name):
    x, _ = images
    assert not torch.equal(C.corrupt(x, name=name, severity=3, seed=0), C.corrupt(x, name=name, severity=3, seed=1))


# Mean absolute change grows with severity for these; glass blur, elastic, motion blur, frost and spatter
# mix several constants per severity (CIFAR-10-C's elastic shrinks its affine part as the elastic part grows),
# so for all corruptions we only require severity 5 to move images further than severity 1.
MONOTONE = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "fog", "brightness",
            "contrast", "pixelate", "speckle_noise", "gaussian_blur")


def test_severity_degrades_on_average(images):
    x, _ = images
    for name in C.ALL:
        d = [float((C.corrupt(x, name=name, severity=s) - x).abs().mean()) for s in C.SEVERITIES]
        if name in MONOTONE:
            assert all(a < b for a, b in zip(d, d[1:])), (name, d)
        if name != "elastic_transform":
            assert d[4] > d[0], (name, d)


def test_gaussian_noise_is_per_pixel_with_cifar_sigma():
    x = torch.full((64, 1, 28, 28), 0.5)  # mid-gray: no clipping at sigma 0.1
    out = C.corrupt(x, name="gaussian_noise", severity=5)
    assert abs(float((out - x).std()) - 0.10) < 0.005  # not shrunk by sqrt(3) through an RGB round trip


def test_brightness_and_contrast_by_hand():
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.5
    out = C.corrupt(x, name="brightness", severity=5)  # + 0.3
    assert torch.allclose(out, ((x + 0.3) * 255).round() / 255, atol=1e-6)
    out = C.corrupt(x, name="contrast", severity=1)  # (x - m) * 0.75 + m, m over the zero-padded 32x32 image
    m = x.sum((-1, -2), keepdim=True) / 32**2
    assert torch.allclose(out, (((x - m) * 0.75 + m).clamp(0, 1) * 255).round() / 255, atol=1e-6)


@pytest.mark.parametrize("name", sorted(C.IMAGENET_C_CONSTANTS))
def test_matches_imagecorruptions_on_deterministic_corruptions(images, name):
    """With the package's (ImageNet-C) constants our gray port equals imagecorruptions.corrupt on gray->RGB."""
    from imagecorruptions import corrupt as ic_corrupt
    x, _ = images
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))  # 32x32 so that no padding differs
    for s in (1, 3):
        ours = C.corrupt(padded, name=name, severity=s, constants="imagenet")[:, 0].numpy()
        for i in range(len(x)):
            img = np.uint8(np.round(padded[i, 0].numpy() * 255))
            ref = ic_corrupt(img, corruption_name=name, severity=s)[..., 0] / 255.0  # replicated to RGB inside
            assert np.abs(ours[i] - ref).max() <= 1.5 / 255, (name, s, i)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown corruption"):
        C.corrupt(torch.zeros(1, 1, 28, 28), name="rain", severity=1)
    with pytest.raises(ValueError, match="severity"):
        C.corrupt(torch.zeros(1, 1, 28, 28), name="fog", severity=6)
    with pytest.raises(ValueError, match="load_cifar10_c"):
        C.corrupt(torch.zeros(1, 3, 32, 32), name="fog", severity=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        C.corrupt(torch.full((1, 1, 28, 28), 255.0), name="fog", severity=1)
    with pytest.raises(FileNotFoundError, match="download_cifar10_c"):
        C.load_cifar10_c("/nonexistent/CIFAR-10-C")
    with pytest.raises(FileNotFoundError, match="ImageNet-C"):
        C.load_imagenet_c("/nonexistent", name="fog", severity=1)


def test_cache_manifest_roundtrip(images, tmp_path):
    x, y = images
    names = ("fog", "pixelate")
    first = C.corrupted_set(x, y, names=names, seed=0, cache_dir=tmp_path, progress=False)
    assert first["seconds"] > 0 and first["images"]["fog"].shape == (5, 8, 1, 28, 28)
    assert first["images"]["fog"].dtype == torch.uint8
    again = C.corrupted_set(x, y, names=names, seed=0, cache_dir=tmp_path, progress=False)
    assert again["seconds"] == 0  # served from the cache
    assert torch.equal(first["images"]["fog"], again["images"]["fog"])
    expected = (C.corrupt(x, name="fog", severity=2) * 255).round().to(torch.uint8)
    assert torch.equal(first["images"]["fog"][1], expected)
    folder = tmp_path / first["folder"].split("/")[-1]
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert set(manifest) == set(names) and len(manifest["fog"]["sha256"]) == 64
    (folder / "fog.pt").write_bytes(b"tampered")  # a corrupt cache file is detected and regenerated
    fixed = C.corrupted_set(x, y, names=names, seed=0, cache_dir=tmp_path, progress=False)
    assert fixed["seconds"] > 0 and torch.equal(fixed["images"]["fog"], first["images"]["fog"])


def test_cifar10_c_loader(tmp_path):
    labels = np.arange(50000) % 10
    np.save(tmp_path / "labels.npy", labels.astype(np.uint8))
    arr = np.random.default_rng(0).integers(0, 256, size=(50000, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "fog.npy", arr)
    out = C.load_cifar10_c(tmp_path, names=("fog",), severities=(2,))
    assert out["images"]["fog"].shape == (1, 10000, 3, 32, 32)
    assert torch.equal(out["images"]["fog"][0, 5], torch.from_numpy(arr[10005]).permute(2, 0, 1))
    assert out["labels"].shape == (10000,)


def test_stratified_subset():
    labels = torch.arange(100) % 10
    idx = C.stratified_subset(labels, per_class=3, seed=0)
    assert len(idx) == 30 and torch.equal(torch.bincount(labels[idx]), torch.full((10,), 3))
    assert torch.equal(idx, C.stratified_subset(labels, per_class=3, seed=0))
    with pytest.raises(ValueError, match="per_class"):
        C.stratified_subset(labels, per_class=11)


def test_download_offline_gives_clear_error(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    with pytest.raises(RuntimeError, match="offline"):
        C.download_cifar10_c(tmp_path)
    with pytest.raises(RuntimeError, match="offline"):
        C.download_imagenet_c(tmp_path, families=("noise",))
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "CIFAR-10-C.tar").exists()
