"""pcnet: predictive-coding dynamics for pretrained convolutional networks (after Predify).

    net = pcnet.predify(model, layers=["features.3", "features.8"], input_shape=(3, 224, 224))
    logits = net(images, timesteps=10)  # (11, batch, classes); index 0 is the plain backbone
"""
from . import decoders, dynamics, hparams, presets
from .build import predify
from .controls import rescaled_forward
from .core import PredNet, Trace
from .docs import show_source
from .feedback import feedback_loss, feedback_step

__all__ = ["predify", "PredNet", "Trace", "feedback_loss", "feedback_step", "rescaled_forward", "show_source",
           "decoders", "dynamics", "hparams", "presets"]
__version__ = "0.1.0"

# Helper modules load on first use (``pcnet.data``, ``pcnet.plotting``, ...): ``import pcnet`` stays light and
# needs none of the book's extras.
_LAZY = ("attacks", "corruptions", "data", "evaluate", "metrics", "models", "plotting", "train", "tta", "tuning",
         "weights")


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
