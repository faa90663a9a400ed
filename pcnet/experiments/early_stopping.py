"""Early stopping on a validation loss: stop once it has not improved for ``patience`` epochs; keep the best weights.

Used by :func:`pcnet.experiments.train.train_feedback` (``patience=``) on the summed per-layer validation loss of
eq-feedback-loss. The stopper has ``state_dict`` / ``load_state_dict``, so a training checkpoint carries it and a
resumed run stops where the uninterrupted run would have stopped. Nothing runs at import.
"""
from __future__ import annotations

import math

from torch import nn


class EarlyStopping:
    """Track the best (lowest) validation loss; ``stop`` once ``patience`` epochs in a row did not lower it by more
    than ``min_delta`` (absolute). ``restore(module)`` puts back the weights of the best epoch."""

    def __init__(self, *, patience: int, min_delta: float = 0.0):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an int >= 1 (epochs without improvement before stopping), got "
                             f"{patience!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not 0 <= min_delta < math.inf:
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
        self.patience, self.min_delta = patience, float(min_delta)
        self.best, self.best_epoch, self.bad_epochs, self.best_state = math.inf, 0, 0, None

    @property
    def stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def update(self, loss: float, *, epoch: int, module: nn.Module) -> bool:
        """Record epoch ``epoch``'s validation ``loss`` (keeping ``module``'s weights if it is the best so far);
        returns ``stop``."""
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"the validation loss of epoch {epoch} is {loss}; early stopping needs finite losses")
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = loss, epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.stop

    def restore(self, module: nn.Module) -> None:
        """Load the best epoch's weights into ``module`` (no-op before the first ``update``)."""
        if self.best_state is not None:
            module.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {"patience": self.patience, "min_delta": self.min_delta, "best": self.best,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        if (state["patience"], state["min_delta"]) != (self.patience, self.min_delta):
            raise ValueError(f"this stopper has patience={self.patience}, min_delta={self.min_delta}; the state has "
                             f"patience={state['patience']}, min_delta={state['min_delta']}")
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.best_state = state["best_state"]
