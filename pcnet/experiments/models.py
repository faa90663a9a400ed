"""Every model builder of the book: backbones, ready-made predified networks, reference-weight loaders.

Presets: the shallow CIFAR network of the Predify follow-up work (``pshallow_cifar``). The ImageNet presets
(PVGG16, PEfficientNetB0, PResNet18, EfficientNet-Lite0) are built in ``pcnet.experiments.zoo`` and re-exported
here.

`fmnist_vgg` is the small VGG-style BatchNorm CNN of chapter 2 (book/02_backbone.ipynb);
`load_reference_backbone` / `load_reference_prednet` load the weights that chapter and
chapter 3 (book/03_feedback.ipynb) commit under data/weights/.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ..build import predify
# The ImageNet presets live in zoo.py (one module per job); their names are re-exported here, so
# ``models`` is the one place to import a model builder from.
from .zoo import (EFFICIENTNET_B0_LAYERS, RESNET18_LAYERS, VGG16_LAYERS, Normalize, efficientnet_lite0,
                  pefficientnet_b0, presnet18, pvgg16, vgg16_decoders)

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
    "shallow_cifar_net",
    "pshallow_cifar",
    "EFFICIENTNET_B0_LAYERS", "RESNET18_LAYERS", "VGG16_LAYERS", "Normalize", "efficientnet_lite0",
    "pefficientnet_b0", "presnet18", "pvgg16", "vgg16_decoders",
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
    from pcnet.experiments.files import safe_name

    if isinstance(backbone_seed, bool) or not isinstance(backbone_seed, int) or backbone_seed < 0:
        raise ValueError(f"backbone_seed must be an int >= 0 (it names the weights file), got {backbone_seed!r}")
    name = safe_name(name, what="name")
    return name if backbone_seed == 0 else f"{name}_seed{backbone_seed}"


def reference_weights_path(name: str = "fmnist_vgg", *, backbone_seed: int = 0) -> Path:
    """Path of a committed backbone state dict: data/weights/fmnist_vgg.pt (seed 0), fmnist_vgg_seed1.pt, ..."""
    return _weights_dir() / f"{_backbone_stem(name, backbone_seed)}.pt"


def feedback_weights_path(name: str = "fmnist_vgg", *, seed: int = 0, backbone_seed: int = 0) -> Path:
    """Path of committed decoder weights: fmnist_vgg_feedback_seed0.pt, fmnist_vgg_seed1_feedback_seed0.pt, ..."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 (it names the weights file), got {seed!r}")
    return _weights_dir() / f"{_backbone_stem(name, backbone_seed)}_feedback_seed{seed}.pt"


def _load(path: Path, fix: str) -> dict:
    from pcnet.experiments.weights import load_weights

    if not path.exists():
        raise FileNotFoundError(f"reference weights {path} are missing; to recreate them {fix}")
    from pcnet.experiments.files import JournalError

    try:
        return load_weights(path)
    except JournalError:
        raise  # an unfinished save blocks the folder: its message names the file and the fix (not a retrain)
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
    replicate = f" --backbone-seed {backbone_seed}" if backbone_seed else ""
    fix = (f"run `python -m pcnet.experiments.train feedback --name {name}{replicate} --seed {seed}` "
           "(or book/03_feedback.ipynb with TRAIN=True)")
    path = feedback_weights_path(name, seed=seed, backbone_seed=backbone_seed)
    _load(path, fix)  # a clear error naming the fix when missing or corrupt
    from pcnet.experiments.weights import load_decoders

    load_decoders(path, net, preset=name, require_fit=False)  # built at the layers the file was trained for
    return net.eval()


# ---------------------------------------------------------------------------------------------
# Preset: the shallow CIFAR network

SHALLOW_CIFAR_LAYERS = ["1", "4", "7"]


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
