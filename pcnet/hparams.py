"""Hyperparameters beta, lam, alpha per PCoder: validation, fixed and learnable forms.

Fixed values live in buffers. The learnable form maps unconstrained parameters to valid values:
softmax over three logits gives (beta, lam, memory) on the simplex, so beta, lam >= 0 and
beta + lam <= 1 hold for any parameter values, and the top layer's lam logit is masked to -inf so
its lam is exactly 0; alpha = exp(log_alpha) > 0. No value of the parameters gives NaN.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

PAPER_DEFAULTS = {"beta": 0.8, "lam": 0.1, "alpha": 0.01}
LEARNABLE_FLOOR = 1e-3  # a zero lam (non-top) or alpha starts here in the learnable form


def per_layer(value: float | Sequence[float] | torch.Tensor, *, n: int, name: str, top_zero: bool = False) -> torch.Tensor:
    """Broadcast a scalar or check a length-n sequence; returns a float64 tensor (n,).

    With ``top_zero`` (lam), a scalar applies to layers 1..n-1 and the top layer gets 0.
    """
    try:
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number or a sequence of numbers (one per PCoder), got {value!r}; "
                        f"e.g. {name}=0.1") from None
    if t.dim() == 0:
        t = t.repeat(n)  # (n,)
        if top_zero:
            t[-1] = 0.0
    elif t.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one value per PCoder ({n}), got shape {tuple(t.shape)}")
    return t


def validate(beta: torch.Tensor, lam: torch.Tensor, alpha: torch.Tensor) -> None:
    """Raise a ValueError naming the layer when beta, lam, alpha are out of range."""
    for name, v in (("beta", beta), ("lam", lam), ("alpha", alpha)):
        if not torch.isfinite(v).all():
            raise ValueError(f"{name} must be finite, got {v.tolist()}")
        bad = (v < 0).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"{name} must be >= 0; PCoder(s) {bad} have {v[bad].tolist()}")
    over = (beta + lam > 1 + 1e-12).nonzero().flatten().tolist()
    if over:
        raise ValueError(f"beta + lam must be <= 1 (the memory share 1-beta-lam cannot be negative); "
                         f"PCoder(s) {over} have beta+lam = {(beta + lam)[over].tolist()}")
    if lam[-1] != 0:
        raise ValueError(f"the top PCoder has no feedback: its lam must be 0, got {lam[-1].item()} "
                         f"(pass a scalar lam to apply it below the top only)")


class Hyperparameters(nn.Module):
    """beta, lam, alpha for N PCoders, fixed (buffers) or learnable (see module docstring)."""

    def __init__(self, *, n: int, beta, lam, alpha, learnable: bool = False):
        super().__init__()
        if not isinstance(learnable, bool):
            raise TypeError(f"learnable must be True or False, got {learnable!r}")
        self.n, self.learnable = n, learnable
        beta, lam, alpha = self._checked(beta, lam, alpha)
        if learnable:
            self.logits = nn.Parameter(torch.zeros(n, 3))  # (N, 3): beta, lam, memory
            self.log_alpha = nn.Parameter(torch.zeros(n))  # (N,)
            self.register_buffer("lam_mask", torch.ones(n, 3, dtype=torch.bool))
            self.lam_mask[-1, 1] = False
        else:
            for name in ("beta", "lam", "alpha"):
                self.register_buffer(name, torch.zeros(n, dtype=torch.float64))  # exact as given
        self.set(beta=beta, lam=lam, alpha=alpha)

    def _checked(self, beta, lam, alpha):
        beta = per_layer(beta, n=self.n, name="beta")
        lam = per_layer(lam, n=self.n, name="lam", top_zero=True)
        alpha = per_layer(alpha, n=self.n, name="alpha")
        validate(beta, lam, alpha)
        return beta, lam, alpha

    @torch.no_grad()
    def set(self, *, beta=None, lam=None, alpha=None) -> None:
        """Replace some or all values (validated together with the ones kept)."""
        old = self.values()
        beta, lam, alpha = self._checked(*(old[k] if v is None else v
                                           for k, v in (("beta", beta), ("lam", lam), ("alpha", alpha))))
        if not self.learnable:
            self.beta.copy_(beta), self.lam.copy_(lam), self.alpha.copy_(alpha)
            return
        memory = 1 - beta - lam
        probs = torch.stack([beta, lam, memory], dim=1).clamp_min(LEARNABLE_FLOOR)  # (N, 3)
        self.logits.copy_(probs.log())
        self.log_alpha.copy_(alpha.clamp_min(LEARNABLE_FLOOR * 1e-2).log())

    def state_dict_error(self, state_dict, prefix: str = "") -> str | None:
        """What is wrong with the hyperparameters under ``prefix`` in ``state_dict`` (None when they are valid or
        absent); :meth:`pcnet.core.PredNet.load_state_dict` asks before loading anything."""
        if not self.learnable and all(prefix + k in state_dict for k in ("beta", "lam", "alpha")):
            try:
                validate(*(torch.as_tensor(state_dict[prefix + k], dtype=torch.float64).cpu()
                           for k in ("beta", "lam", "alpha")))
            except ValueError as err:
                return f"hyperparameters in the state dict are invalid: {err}"
        if self.learnable and any(prefix + k in state_dict and not torch.isfinite(state_dict[prefix + k]).all()
                                  for k in ("logits", "log_alpha")):
            return "learnable hyperparameters in the state dict have NaN or infinite values"
        return None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Loading validates the values first: an out-of-range beta, lam or alpha is refused, nothing changes."""
        error = self.state_dict_error(state_dict, prefix)
        if error is not None:
            error_msgs.append(error)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _apply(self, fn, recurse=True):
        """Casts such as ``.to(torch.bfloat16)`` keep beta, lam, alpha at their precision (devices still follow)."""
        kept = {k: t.detach() for k, t in [*self._parameters.items(), *self._buffers.items()] if t is not None}
        super()._apply(fn, recurse)
        for k, old in kept.items():
            new = getattr(self, k)
            if new.is_floating_point() and torch.finfo(new.dtype).eps > torch.finfo(old.dtype).eps:  # rounded
                if k in self._parameters:
                    new.data = old.to(device=new.device)
                else:
                    self._buffers[k] = old.to(device=new.device)
        return self

    def values(self) -> dict[str, torch.Tensor]:
        """{"beta", "lam", "alpha"} -> tensors (N,), differentiable in the learnable form."""
        if not self.learnable:
            return {"beta": self.beta, "lam": self.lam, "alpha": self.alpha}
        logits = self.logits.masked_fill(~self.lam_mask, -math.inf)  # (N, 3)
        probs = torch.softmax(logits, dim=1)  # (N, 3)
        return {"beta": probs[:, 0], "lam": probs[:, 1], "alpha": self.log_alpha.exp()}
