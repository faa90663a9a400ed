"""pcnet.experiments.zoo: normalisation inside the presets, PCoder positions, hyperparameter sets, weights, errors."""
import importlib.util

import pytest
import torch
import torchvision
from torch import nn

from pcnet.experiments import models, zoo

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed (pcnet[timm])")


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return zoo.pvgg16(image_size=32)


def test_normalisation_is_the_first_module_and_uses_imagenet_constants(vgg):
    norm = vgg.backbone[0]
    assert isinstance(norm, zoo.Normalize) and list(vgg.backbone._modules) == ["normalize", "net"]
    x = torch.rand(2, 3, 32, 32)
    by_hand = (x[1, 2, 5, 7] - 0.406) / 0.225  # blue channel: ImageNet mean and std
    torch.testing.assert_close(norm(x)[1, 2, 5, 7], by_hand)
    with torch.no_grad():
        raw = vgg.backbone.net((x - torch.tensor(zoo.IMAGENET_MEAN).view(1, 3, 1, 1))
                               / torch.tensor(zoo.IMAGENET_STD).view(1, 3, 1, 1))  # what the torchvision model sees
        torch.testing.assert_close(vgg(x, timesteps=0)[0], raw)


def test_vgg_pcoders_sit_where_they_did_before_the_normalisation(vgg):
    assert vgg.layers == ["net." + p for p in ["features.3", "features.8", "features.15", "features.22", "features.29"]]
    features = vgg.backbone.net.features
    for path in vgg.layers:
        i = int(path.rsplit(".", 1)[1])
        assert isinstance(features[i], nn.ReLU) and isinstance(features[i + 1], nn.MaxPool2d)  # end of a conv block
    assert vgg.shapes == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]


def test_vgg_hyperparameter_sets(vgg):
    values = vgg.hparams()
    assert values["beta"].tolist() == [0.8] * 5 and values["lam"].tolist() == [0.1] * 4 + [0.0]
    assert values["alpha"].tolist() == [0.01] * 5
    per_layer = zoo.pvgg16(image_size=32, hparams="per_layer").hparams()
    assert per_layer["beta"].tolist() == [0.2, 0.4, 0.4, 0.5, 0.6]
    assert per_layer["lam"].tolist() == [0.05, 0.1, 0.1, 0.1, 0.0]
    assert per_layer["alpha"].tolist() == [0.01] * 5
    assert zoo.pvgg16(image_size=32, hparams="per_layer", alpha=0.02).hparams()["alpha"].tolist() == [0.02] * 5


def test_bad_names_name_the_choices():
    with pytest.raises(ValueError, match=r"hparams must be one of \['uniform', 'per_layer'\]"):
        zoo.pvgg16(image_size=32, hparams="paper")
    with pytest.raises(ValueError, match=r"\['uniform'\] for pefficientnet_b0"):
        zoo.pefficientnet_b0(image_size=32, backend="torchvision", hparams="per_layer")
    with pytest.raises(ValueError, match=r"unknown weights 'IMAGENET_V9'.*'IMAGENET1K_V1'"):
        zoo.presnet18(weights="IMAGENET_V9", image_size=32)
    with pytest.raises(ValueError, match="backend must be 'timm', 'torchvision'"):
        zoo.pefficientnet_b0(backend="keras")


def _efficientnet_decoder_kinds(net):
    return [(type(d[0]).__name__, d[-1].in_channels, d[-1].out_channels, d[-1].kernel_size) for d in net.decoders]


@pytest.mark.parametrize("backend", ["torchvision", pytest.param("timm", marks=needs_timm)])
def test_efficientnet_b0_has_the_authors_pcoders_and_decoders(backend):
    net = zoo.pefficientnet_b0(backend=backend, image_size=64)
    assert net.meta["backbone"] == f"{backend}.efficientnet_b0" and len(net.layers) == 8
    assert net.shapes == [(32, 32, 32), (16, 32, 32), (24, 16, 16), (40, 8, 8), (80, 4, 4), (112, 4, 4),
                          (192, 2, 2), (320, 2, 2)]
    ups = [i for i, d in enumerate(net.decoders) if isinstance(d[0], nn.Upsample)]
    assert ups == [0, 2, 3, 4, 6]  # where the layer below is twice as large
    assert all(net.decoders[i][0].mode == "bilinear" and net.decoders[i][0].scale_factor == 2.0 for i in ups)
    assert [k[1:3] for k in _efficientnet_decoder_kinds(net)] == [(32, 3), (16, 32), (24, 16), (40, 24), (80, 40),
                                                                  (112, 80), (192, 112), (320, 192)]
    assert all(k[3] == (3, 3) for k in _efficientnet_decoder_kinds(net))
    assert not any(isinstance(m, nn.ReLU) for m in net.decoders.modules())  # SiLU and stage outputs can be < 0
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert net(x, timesteps=1).shape == (2, 2, 1000)


@needs_timm
def test_timm_and_torchvision_efficientnet_b0_have_the_same_architecture():
    tv, tm = (zoo.pefficientnet_b0(backend=b, image_size=32) for b in ("torchvision", "timm"))
    assert sum(p.numel() for p in tv.backbone.parameters()) == sum(p.numel() for p in tm.backbone.parameters())
    assert tv.shapes == tm.shapes and tm.layers[0] == "net.bn1"


def test_normalize_false_is_the_original_setting():
    net = zoo.presnet18(image_size=32, normalize=False)
    assert net.layers == ["layer1", "layer2", "layer3", "layer4"] and isinstance(net.backbone, torchvision.models.ResNet)
    steps = zoo.preprocessing(net).transforms
    assert isinstance(steps[-1], torchvision.transforms.Normalize) and list(steps[-1].mean) == list(zoo.IMAGENET_MEAN)


def test_preprocessing_comes_from_the_weights(monkeypatch):
    """Torchvision weights carry their preprocessing (simulated download: a fresh model's state dict)."""
    state = torchvision.models.efficientnet_b0().state_dict()
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: state)
    net = zoo.pefficientnet_b0(weights="DEFAULT", backend="torchvision", image_size=224)
    assert net.meta["weights"] == "EfficientNet_B0_Weights.IMAGENET1K_V1"
    assert (net.meta["resize"], net.meta["crop"], net.meta["interpolation"]) == (256, 224, "bicubic")
    steps = zoo.preprocessing(net).transforms
    assert steps[0].size == 256 and steps[0].interpolation.value == "bicubic" and steps[1].size == (224, 224)
    image = torchvision.transforms.functional.to_pil_image(torch.rand(3, 300, 260))
    out = zoo.preprocessing(net)(image)
    assert out.shape == (3, 224, 224) and 0 <= out.min() and out.max() <= 1  # [0, 1]: normalised inside the model
    assert zoo.preprocessing(net, train=True)(image).shape == (3, 224, 224)


def test_models_module_still_exports_the_presets():
    assert models.pvgg16 is zoo.pvgg16 and models.efficientnet_lite0 is zoo.efficientnet_lite0
