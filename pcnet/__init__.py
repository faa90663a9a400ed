"""pcnet: predictive-coding dynamics for pretrained convolutional networks (after Predify).

    net = pcnet.predify(model, layers=["features.3", "features.8"], input_shape=(3, 224, 224))
    logits = net(images, timesteps=10)  # (11, batch, classes); index 0 is the plain backbone

The core (this package's top-level modules) needs only torch and torchvision. The book's helpers (data, model
builders, training, evaluation, plots) live in ``pcnet.experiments``, which the core never imports.
"""
from . import decoders, dynamics, hparams
from .build import predify
from .controls import rescaled_forward
from .core import PredNet, Trace
from .docs import show_source
from .feedback import feedback_loss, feedback_step
from .saving import load_feedback

__all__ = ["predify", "PredNet", "Trace", "feedback_loss", "feedback_step", "load_feedback", "rescaled_forward",
           "show_source", "decoders", "dynamics", "hparams"]
__version__ = "0.1.0"
