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


def test_the_four_extra_corruptions_are_generated(tmp_path):
    from imagecorruptions import corrupt
    from torchvision import transforms

    from pcnet.experiments.corruptions import EXTRA

    val = _images(tmp_path / "val", n=1)
    kw = dict(names=list(EXTRA), severities=[3], size=32, cache_dir=tmp_path / "cache", progress=False)
    sets = imagenet_c.generate_imagenet_c(val, **kw)
    assert sorted(n for n, _ in sets) == sorted(EXTRA) and all(len(v) == 2 for v in sets.values())
    to_uint8 = transforms.Compose([transforms.Resize(37), transforms.CenterCrop(32), transforms.PILToTensor()])
    clean = to_uint8(Image.open(val / "n01440764" / "0.JPEG").convert("RGB"))  # (3, 32, 32)
    for name in ("gaussian_blur", "saturate"):  # deterministic corruptions: exactly the package's
        expected = np.clip(corrupt(clean.permute(1, 2, 0).numpy(), severity=3, corruption_name=name), 0, 255)
        assert torch.equal(sets[name, 3].images[0], torch.from_numpy(expected.astype(np.uint8)).permute(2, 0, 1))
    for name in ("speckle_noise", "spatter"):  # random ones: changed, and the same again (seeded)
        assert not torch.equal(sets[name, 3].images[0], clean)
    again = imagenet_c.generate_imagenet_c(val, **dict(kw, cache_dir=tmp_path / "other"))
    assert all(torch.equal(again[k].images, v.images) for k, v in sets.items())
    with pytest.raises(ValueError, match=r"unknown corruptions or severities \['speckle'\].*4 extra"):
        imagenet_c.generate_imagenet_c(val, **dict(kw, names=["speckle"]))


def test_alexnet_normalised_mce_by_hand():
    from pcnet.experiments import scale_eval

    # 2 corruptions x 2 severities x (T+1 = 2) x 4 images; speckle_noise has no AlexNet error and is left out
    correct = torch.ones(2, 2, 2, 4, dtype=torch.bool)
    correct[0, 0, 0, :2] = False  # gaussian_noise, severity 1, t = 0: error 1/2
    correct[0, 1, 0, :] = False  # severity 2, t = 0: error 1
    correct[0, 1, 1, :1] = False  # severity 2, t = 1: error 1/4
    correct[1] = False  # speckle_noise: all wrong, must not count
    names = ["gaussian_noise", "speckle_noise"]
    ce = imagenet_c.alexnet_ce(correct, names)  # (1, 2)
    torch.testing.assert_close(ce, torch.tensor([[0.75 / 0.886428, 0.125 / 0.886428]]))
    summary = scale_eval.corruption_summary(correct, names=names)
    torch.testing.assert_close(summary["mCE (AlexNet-normalised)"], ce[0])
    assert set(summary) == {"mCE (mean of ratios)", "ratio of means", "mCE (AlexNet-normalised)"}
    assert len(imagenet_c.ALEXNET_ERROR) == 15 and imagenet_c.ALEXNET_ERROR["jpeg_compression"] == 0.6065
    with pytest.raises(ValueError, match="none of .* has a published AlexNet error"):
        imagenet_c.alexnet_ce(correct[1:], ["spatter"])
    with pytest.raises(ValueError, match="1 names for 2 corruptions"):
        imagenet_c.alexnet_ce(correct, ["gaussian_noise"])


def test_corruption_family_has_three_definitions_with_names():
    from pcnet.experiments import scale_eval

    g = torch.Generator().manual_seed(0)
    correct = {"dynamics": torch.rand(2, 2, 3, 20, generator=g) > 0.4}  # (C, S, T+1, n)
    family = scale_eval.corruption_family(correct, n_boot=200, names=["fog", "saturate"])
    assert [v.contrast.split(": ")[1] for v in family] == ["mCE (mean of ratios) t=T / t=0", "ratio of means t=T / t=0",
                                                           "AlexNet mCE t=T / t=0"]
    # the AlexNet ratio over one corruption equals fog's error ratio: AlexNet's constant cancels
    err = 1 - correct["dynamics"][0].float().mean(-1).mean(0)  # (T+1,)
    assert abs(family[2].estimate - float(err[-1] / err[0])) < 1e-6
