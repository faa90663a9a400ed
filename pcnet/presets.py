"""Ready-made predified networks: the paper's PVGG16 and PEfficientNetB0, ResNet-18, and the shallow
CIFAR network of the Predify follow-up work. ``weights=None`` builds untrained backbones (no download);
pass torchvision weights (e.g. ``"DEFAULT"``) on a connected machine to load them.
"""
from __future__ import annotations

import torchvision
from torch import nn

from .build import predify


def _torchvision(builder, weights):
    """Build a torchvision model; a failed weights download gets an error that names the fix."""
    try:
        return builder(weights=weights)
    except OSError as err:  # URLError, socket and file errors while fetching the weights
        raise RuntimeError(f"could not load torchvision weights {weights!r} for {builder.__name__} ({err}); they are "
                           f"downloaded from the internet: run once on a connected machine (or Colab) so they are "
                           f"cached under ~/.cache/torch, or pass weights=None for an untrained backbone") from err

VGG16_LAYERS = ["features.3", "features.8", "features.15", "features.22", "features.29"]
EFFICIENTNET_B0_LAYERS = ["features.0"] + [f"features.{i}" for i in range(1, 8)]
RESNET18_LAYERS = ["layer1", "layer2", "layer3", "layer4"]
SHALLOW_CIFAR_LAYERS = ["1", "4", "7"]


def vgg16_decoders() -> list[nn.Module]:
    """The paper's PVGG16 feedback: transposed convolutions, ReLU except for the image."""
    def up(c_in, c_out, k, s, p):
        return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, k, stride=s, padding=p), nn.ReLU())
    return [nn.Sequential(nn.ConvTranspose2d(64, 3, 5, stride=1, padding=2)), up(128, 64, 10, 2, 4),
            up(256, 128, 14, 2, 6), up(512, 256, 14, 2, 6), up(512, 512, 14, 2, 6)]


def pvgg16(*, weights=None, image_size: int = 224, **kwargs):
    """PVGG16: torchvision ``vgg16`` with 5 PCoders after the last ReLU of each conv block."""
    return predify(_torchvision(torchvision.models.vgg16, weights), layers=VGG16_LAYERS, input_shape=(3, image_size, image_size),
                   decoders=vgg16_decoders(), **kwargs)


def pefficientnet_b0(*, weights=None, image_size: int = 224, **kwargs):
    """PEfficientNetB0: torchvision ``efficientnet_b0``, 8 PCoders (stem + seven stages), automatic decoders."""
    return predify(_torchvision(torchvision.models.efficientnet_b0, weights), layers=EFFICIENTNET_B0_LAYERS,
                   input_shape=(3, image_size, image_size), **kwargs)


def presnet18(*, weights=None, image_size: int = 224, **kwargs):
    """PResNet18: torchvision ``resnet18``, a PCoder after each residual stage, automatic decoders."""
    return predify(_torchvision(torchvision.models.resnet18, weights), layers=RESNET18_LAYERS,
                   input_shape=(3, image_size, image_size), **kwargs)


def shallow_cifar_net(*, num_classes: int = 10) -> nn.Sequential:
    """Three 5x5 conv-ReLU-maxpool blocks (3->12->18->24 channels) and a 384-120-10 head, for 32x32 input."""
    return nn.Sequential(
        nn.Conv2d(3, 12, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(12, 18, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(18, 24, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(384, 120), nn.ReLU(), nn.Linear(120, num_classes))


def pshallow_cifar(model: nn.Module | None = None, **kwargs):
    """The shallow CIFAR network with PCoders after its three ReLUs (3x3 decoders, upsampling x2 above)."""
    return predify(model if model is not None else shallow_cifar_net(), layers=SHALLOW_CIFAR_LAYERS,
                   input_shape=(3, 32, 32), **kwargs)
