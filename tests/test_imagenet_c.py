"""ImageNet-C at scale: the published layout is checked; generated corruptions are deterministic and cached."""
import numpy as np
import pytest
import torch
from PIL import Image

from pcnet.experiments import imagenet_c


def _images(folder, n=3, size=(40, 48)):
    rng = np.random.default_rng(1)
    for c in ("n01440764", "n02102040"):
        (folder / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / c / f"{i}.JPEG", "PNG")
    return folder


def test_published_layout_missing_severities_name_the_fix(tmp_path):
    for s in (1, 2):
        _images(tmp_path / "gaussian_noise" / str(s), n=1)
    _images(tmp_path / "contrast" / "1", n=1)
    assert imagenet_c.check_imagenet_c(tmp_path, names=["gaussian_noise"], severities=[1, 2]) == tmp_path
    with pytest.raises(ValueError, match=r"lacks 3 .*'contrast/2'.*download_imagenet_c.*generate_imagenet_c"):
        imagenet_c.check_imagenet_c(tmp_path, names=["gaussian_noise", "contrast"], severities=[1, 2, 3])
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        imagenet_c.check_imagenet_c(tmp_path / "absent")


def test_generated_corruptions_are_the_package_s_and_cached(tmp_path):
    from imagecorruptions import corrupt

    val = _images(tmp_path / "val")
    kw = dict(names=["gaussian_noise", "contrast"], severities=[2], size=32, cache_dir=tmp_path / "cache", progress=False)
    sets = imagenet_c.generate_imagenet_c(val, **kw)
    noisy, (image, label) = sets["gaussian_noise", 2], sets["contrast", 2][4]
    assert len(noisy) == 6 and label == 1 and image.shape == (3, 32, 32) and 0 <= image.min() and image.max() <= 1
    # contrast has no randomness: the cached image equals the package applied to the same clean crop
    from torchvision import transforms
    to_uint8 = transforms.Compose([transforms.Resize(37), transforms.CenterCrop(32), transforms.PILToTensor()])
    clean = to_uint8(Image.open(val / "n02102040" / "1.JPEG").convert("RGB"))  # (3, 32, 32)
    expected = np.clip(corrupt(clean.permute(1, 2, 0).numpy(), severity=2, corruption_name="contrast"), 0, 255)
    assert torch.equal(sets["contrast", 2].images[4], torch.from_numpy(expected.astype(np.uint8)).permute(2, 0, 1))
    again = imagenet_c.generate_imagenet_c(val, **kw)  # from the cache: identical, noise included
    assert torch.equal(again["gaussian_noise", 2].images, noisy.images)
    cached = next((tmp_path / "cache").glob("*/gaussian_noise_2.pt"))
    torch.save(torch.zeros(1), cached)  # a changed file fails its sha256 and is made again
    assert torch.equal(imagenet_c.generate_imagenet_c(val, **kw)["gaussian_noise", 2].images, noisy.images)


def test_accuracy_grid_counts_by_hand(tmp_path):
    from pcnet.experiments import metrics, models

    sets = imagenet_c.generate_imagenet_c(_images(tmp_path / "val"), names=["contrast", "brightness"], severities=[1, 5],
                                          size=32, cache_dir=tmp_path / "cache", progress=False)
    torch.manual_seed(0)
    net = models.pshallow_cifar()
    grid = imagenet_c.accuracy_grid(net, sets, timesteps=2, batch_size=4, workers=0, progress=False)
    assert grid.shape == (2, 2, 3)
    x = sets["brightness", 5].images.float() / 255  # (6, 3, 32, 32)
    with torch.no_grad():
        by_hand = (net(x, timesteps=2).argmax(-1) == sets["brightness", 5].labels).float().mean(-1)  # (3,)
    torch.testing.assert_close(grid[1, 1], by_hand)
    assert metrics.normalised_mce(grid).shape == (3,)
