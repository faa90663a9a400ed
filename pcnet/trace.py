"""What a run of the dynamics records (:class:`Trace`) and the recorder that collects it, timestep by timestep, on
the reference and the fast path. Moved out of :mod:`pcnet.core` unchanged (core stays below 400 lines).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import dynamics


@dataclass
class Trace:
    """What :meth:`PredNet.run` returns. N PCoders, T timesteps, B samples."""
    logits: torch.Tensor  # (T+1, B, K)
    errors: torch.Tensor | None = None  # (T+1, N, B) mean squared reconstruction error per sample
    states: list | None = None  # N tensors (T+1, B, C_n, H_n, W_n)
    predictions: list | None = None  # N tensors (T+1, B, ...): D_n(e_n(t)), the prediction of layer n-1
    terms: dict | None = field(default=None)  # name -> (T, N): mean_b ||coefficient * term|| / ||new state||


class _Recorder:
    """Collects the optional per-timestep quantities of a run."""

    def __init__(self, record, steps, n_layers, *, copy):
        self.record, self.steps, self.n = set(record), steps, n_layers
        self.copy = copy  # the fast path's workspace buffers are overwritten by later timesteps
        self.wants_predictions = bool(self.record & {"errors", "predictions"})
        self.errors = [[None] * n_layers for _ in range(steps + 1)]
        self.predictions = [[None] * (steps + 1) for _ in range(n_layers)]
        self.states = [[] for _ in range(n_layers)]
        self.terms = {k: torch.zeros(steps, n_layers) for k in ("feedforward", "feedback", "memory", "error")}

    def add_states(self, states):
        if "states" in self.record:
            for n, s in enumerate(states):
                self.states[n].append(s.clone() if self.copy else s)

    def add_predictions(self, x, states, predictions, t):
        if not self.wants_predictions:
            return
        for n, pred in enumerate(predictions):
            target = x if n == 0 else states[n - 1]
            self.errors[t][n] = dynamics.reconstruction_error(target, pred).detach() / target[0].numel()  # (B,)
            self.predictions[n][t] = pred.clone() if self.copy else pred

    def add_terms(self, n, t, new, feedforward, prediction, state, grad, coef):
        """Relative size of each term of eq. eq-update, from :func:`pcnet.dynamics.update_terms`."""
        if "terms" not in self.record:
            return
        terms = dynamics.update_terms(state, feedforward=feedforward, prediction=prediction, error_grad=grad,
                                      **coef["at"][n])
        with torch.no_grad():
            norm = new.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)
            for k, (c, v) in terms.items():
                self.terms[k][t - 1, n] = 0.0 if v is None else float(((c * v).flatten(1).norm(dim=1) / norm).mean())

    def trace(self, logits, final_states):
        out = Trace(logits=logits)
        if "states" in self.record:
            out.states = [torch.stack(s + [f]) for s, f in zip(self.states, final_states)]
        if "errors" in self.record:
            out.errors = torch.stack([torch.stack(e) for e in self.errors])  # (T+1, N, B)
        if "predictions" in self.record:
            out.predictions = [torch.stack(p) for p in self.predictions]
        if "terms" in self.record:
            out.terms = self.terms
        return out
