"""PredNet: a frozen backbone with PCoders at chosen layers, run as predictive-coding dynamics.

The backbone's own forward computes each F_n: at every timestep it runs once with temporary forward
hooks that replace the output of PCoder n's module by the updated state e_n(t+1) (eq. eq-update), so
the next segment already sees the updated layer below and the head turns e_N(t+1) into logits.
Under ``torch.no_grad()``/``inference_mode`` the error gradient is the decoder's adjoint (no graph);
with gradients enabled it is built by autograd with ``create_graph=True`` so everything is differentiable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from . import decoders as dec
from . import dynamics, wiring
from .hparams import PAPER_DEFAULTS, Hyperparameters

RECORDABLE = ("errors", "states", "predictions", "terms")
FEEDBACK = ("prediction", "zero")


@dataclass
class Trace:
    """What :meth:`PredNet.run` returns. N PCoders, T timesteps, B samples."""
    logits: torch.Tensor  # (T+1, B, K)
    errors: torch.Tensor | None = None  # (T+1, N, B) mean squared reconstruction error per sample
    states: list | None = None  # N tensors (T+1, B, C_n, H_n, W_n)
    predictions: list | None = None  # N tensors (T+1, B, ...): D_n(e_n(t)), the prediction of layer n-1
    terms: dict | None = field(default=None)  # name -> (T, N): mean_b ||coefficient * term|| / ||new state||


class PredNet(nn.Module):
    """A predified backbone; build it with :func:`predify`.

    Concurrency: the temporary hooks of a call act only in the thread that made the call, so the same
    PredNet called from several threads, several PredNets on one backbone, and a plain ``backbone(x)`` in
    another thread all give the results they give alone. Every call runs the backbone in eval mode
    (BatchNorm running statistics used, never updated) whatever its training flag, which is restored
    afterwards; while a call runs, other threads see the backbone in eval mode too.
    """

    def __init__(self, backbone, *, layers, input_shape, shapes, decoders, hyper, error_scale, projective_fields):
        super().__init__()
        self.backbone = backbone
        self.layers = list(layers)
        self.input_shape = tuple(input_shape)
        self.shapes = [tuple(s) for s in shapes]
        self.decoders = nn.ModuleList(decoders)
        self.hyper = hyper
        self.error_scale = error_scale
        self.register_buffer("projective_fields", torch.tensor(projective_fields, dtype=torch.float64))

    # ----------------------------------------------------------------- public API
    def forward(self, x: torch.Tensor, *, timesteps: int = 0, feedback: str = "prediction") -> torch.Tensor:
        """Logits at every timestep, shape (timesteps+1, B, K); index 0 is the plain feedforward pass."""
        return self.run(x, timesteps=timesteps, feedback=feedback).logits

    @wiring.dynamics_call  # backbone in eval mode whatever its flag; torch.compile's grad-mode limit explained
    def run(self, x, *, timesteps: int = 0, feedback: str = "prediction", record: Sequence[str] = ()) -> Trace:
        """Run the dynamics and return a :class:`Trace` with the quantities named in ``record``."""
        self._check_input(x)
        steps, record = self._check_options(timesteps, feedback, record)
        grad_mode = torch.is_grad_enabled()
        coef = self._coefficients(grad_mode)
        suffix = wiring.sequential_suffix(self.backbone, self.layers[0])  # None unless F_1(x) can be reused
        states, logit = self._feedforward(x)
        first_feedforward = states[0]  # F_1(e_0): the image never changes, so neither does this term
        workspace = None if grad_mode else {}  # fast path: buffers reused by every step of this run
        logits, rec = [logit], _Recorder(record, steps, len(self.layers), copy=workspace is not None)
        for t in range(1, steps + 1):
            predictions, grads = self._predict(x, states, coef, grad_mode, t, always=rec.wants_predictions,
                                               workspace=workspace)
            rec.add_states(states)
            rec.add_predictions(x, states, predictions, t - 1)
            feedback_in = predictions[1:] + [None] if feedback == "prediction" else [None] * len(states)
            states, logit = self._step(x, states, feedback_in, grads, coef, t, rec, suffix=suffix,
                                       first_feedforward=first_feedforward, workspace=workspace)
            logits.append(logit)
        if rec.wants_predictions:
            with torch.no_grad():
                predictions = [d(s) for d, s in zip(self.decoders, states)]
            rec.add_predictions(x, states, predictions, steps)
        return rec.trace(torch.stack(logits), states)

    def set_hparams(self, *, beta=None, lam=None, alpha=None) -> None:
        """Change beta, lam and/or alpha (scalar or one per PCoder); validated."""
        self.hyper.set(beta=beta, lam=lam, alpha=alpha)

    def hparams(self) -> dict[str, torch.Tensor]:
        """Current values {"beta", "lam", "alpha"}, each a tensor (N,)."""
        return {k: v.detach().clone() for k, v in self.hyper.values().items()}

    def hparam_parameters(self):
        """The learnable hyperparameter tensors (for an optimiser); needs ``predify(..., learnable=True)``."""
        if not self.hyper.learnable:
            raise ValueError("hyperparameters are fixed; build the network with predify(..., learnable=True)")
        return iter([self.hyper.logits, self.hyper.log_alpha])

    def unwrap(self) -> nn.Module:
        """The original backbone, unchanged (no hooks stay attached)."""
        return self.backbone

    def _apply(self, fn, recurse=True):
        """Casts such as ``net.to(torch.bfloat16)`` keep the projective fields in float64 (devices still follow)."""
        fields = self.projective_fields
        super()._apply(fn, recurse)
        self.projective_fields = fields.to(device=self.projective_fields.device)
        return self

    def train(self, mode: bool = True):
        """Decoders follow ``mode``; the backbone always stays in eval mode (frozen BatchNorm statistics)."""
        super().train(mode)
        self.backbone.eval()
        return self

    # ----------------------------------------------------------------- the steps
    def _pc_modules(self):
        return [self.backbone.get_submodule(name) for name in self.layers]

    def _feedforward(self, x):
        """t = 0: the plain backbone pass, recording e_n(0) = F_n(e_{n-1}(0))."""
        states = [None] * len(self.layers)

        def record(n, out):
            if states[n] is not None:
                raise RuntimeError(f"layer {self.layers[n]!r} ran twice in one forward pass")
            states[n] = out

        with wiring.hooked(self._pc_modules(), record):
            logit = self.backbone(x)
        return states, logit

    def _predict(self, x, states, coef, grad_mode, t, *, always, workspace):
        """Predictions D_n(e_n(t)) and error gradients (eq. eq-error-grad) from the current states."""
        predictions, grads = [], []
        layer_inputs = [x] + list(states)  # e_0 (the image), e_1, ..., e_N
        converted = {}  # index -> channels-last copy, made once per step

        def view(i, channels_last):  # e_i as decoder n reads it: channels-last where that is faster (see below)
            if not channels_last:
                return layer_inputs[i]
            if i not in converted:
                converted[i] = dec.to_channels_last(workspace, ("channels-last", i), layer_inputs[i])
            return converted[i]

        for n, decoder in enumerate(self.decoders):
            # fast path on CPU: small-kernel decoders run channels-last (oneDNN's direct kernels, several times
            # faster than NCHW's im2col here); large kernels (PVGG16's 10x10, 14x14) are faster as they are
            fast = not grad_mode and dec.supports_adjoint(decoder)
            channels_last = (fast and workspace is not None and x.device.type == "cpu"
                             and dec.prefers_channels_last(decoder))
            need_grad = coef["learnable"] or coef["alpha"][n] != 0
            need_pred = always or need_grad or (n > 0 and coef["lam"][n - 1] != 0)
            state = view(n + 1, channels_last and need_pred)
            target = view(n, channels_last and need_grad)  # the image or the layer below: only the error needs it
            ws = None if workspace is None else workspace.setdefault(("decoder", n), {})
            pred = grad = None
            if need_grad:
                scale = dynamics.error_scale(mode=self.error_scale, projective_field=float(self.projective_fields[n]),
                                             batch=x.shape[0], numel=target[0].numel())
                if fast:
                    pred, grad = dynamics.error_gradient_adjoint(decoder, state, target, scale=scale, workspace=ws)
                else:
                    pred, grad = dynamics.error_gradient(decoder, state, target, scale=scale, create_graph=grad_mode)
            elif need_pred and fast:
                pred, _ = dec.forward_with_tape(decoder, state, workspace=ws)  # (B, C_{n-1}, H_{n-1}, W_{n-1})
            elif need_pred:
                pred = decoder(state)  # (B, C_{n-1}, H_{n-1}, W_{n-1})
            self._check_finite(grad, f"error gradient of PCoder {n} ({self.layers[n]!r})", t)
            predictions.append(pred)
            grads.append(grad)
        return predictions, grads

    def _step(self, x, states, feedback_in, grads, coef, t, rec, *, suffix, first_feedforward, workspace):
        """One timestep: the backbone forward with each PCoder output replaced by eq. eq-update.

        When the backbone is a chain of nn.Sequential down to the first PCoder (``suffix`` not None), only the
        modules after it run: its feedforward input F_1(e_0) is the constant ``first_feedforward``.
        """
        new_states = [None] * len(states)

        def replace(n, feedforward):
            if new_states[n] is not None:
                raise RuntimeError(f"layer {self.layers[n]!r} ran twice in one forward pass")
            out = None if workspace is None else dec.scratch(workspace, ("new state", n, t % 2), feedforward)
            new = dynamics.update_state(states[n], feedforward=feedforward, prediction=feedback_in[n],
                                        error_grad=grads[n], beta=coef["beta"][n], lam=coef["lam"][n],
                                        alpha=coef["alpha"][n], out=out)
            self._check_finite(new, f"state of PCoder {n} ({self.layers[n]!r})", t)
            rec.add_terms(n, t, new, feedforward, feedback_in[n], states[n], grads[n], coef)
            new_states[n] = new
            return new

        modules = self._pc_modules()
        if suffix is None:
            with wiring.hooked(modules, replace):
                logit = self.backbone(x)
            return new_states, logit
        with wiring.hooked(modules[1:], lambda n, out: replace(n + 1, out)):
            logit = replace(0, first_feedforward)
            for module in suffix:
                logit = module(logit)
        return new_states, logit

    def _coefficients(self, grad_mode):
        values = self.hyper.values()
        learnable = self.hyper.learnable and grad_mode
        if learnable:
            coef = {k: list(v.unbind()) for k, v in values.items()}  # 0-dim tensors, differentiable
        else:
            coef = {k: [float(c) for c in v.detach().tolist()] for k, v in values.items()}
        coef["learnable"] = learnable
        return coef

    # ----------------------------------------------------------------- checks
    @staticmethod
    def _check_finite(tensor, what, t):
        # one reduction: any inf or NaN (or an overflowing sum, itself a sign of divergence) makes the sum non-finite
        if tensor is not None and not torch.isfinite(tensor.sum()):
            raise FloatingPointError(f"non-finite values in the {what} at timestep {t}; lower alpha (or check the "
                                     f"input and decoder weights)")

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor of shape (batch, {', '.join(map(str, self.input_shape))}), "
                            f"got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            raise ValueError(f"input must have shape (batch, {c}, {h}, {w}), got {tuple(x.shape)}; resize or crop "
                             f"the images (decoders are built for {h}x{w}) or predify again with input_shape=...")
        p = next(self.decoders.parameters())
        if not x.is_floating_point() or x.dtype != p.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the network's {p.dtype}; use x.to({p.dtype})"
                            f"{' after scaling integer pixels to floats' if not x.is_floating_point() else ''}")
        if x.device != p.device:
            raise ValueError(f"input is on {x.device} but the network is on {p.device}; move one: x.to('{p.device}')")
        if x.shape[0] == 0:
            raise ValueError("input has an empty batch (shape[0] == 0); pass at least one image")
        if not torch.isfinite(x).all():
            raise ValueError(f"input has {int((~torch.isfinite(x)).sum())} NaN or infinite values; replace them "
                             f"(e.g. torch.nan_to_num(x)) or drop those images")

    @staticmethod
    def _check_options(timesteps, feedback, record):
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 0:
            raise ValueError(f"timesteps must be an integer >= 0, got {timesteps!r}")
        if feedback not in FEEDBACK:
            raise ValueError(f"feedback must be one of {FEEDBACK}, got {feedback!r}")
        record = (record,) if isinstance(record, str) else tuple(record)
        unknown = [r for r in record if r not in RECORDABLE]
        if unknown:
            raise ValueError(f"cannot record {unknown}; choose from {RECORDABLE}")
        return timesteps, record


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
        if "terms" not in self.record:
            return
        with torch.no_grad():
            norm = new.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)
            parts = {"feedforward": coef["beta"][n] * feedforward, "memory": (1 - coef["beta"][n] - coef["lam"][n]) * state,
                     "feedback": None if prediction is None else coef["lam"][n] * prediction,
                     "error": None if grad is None else coef["alpha"][n] * grad}
            for k, v in parts.items():
                self.terms[k][t - 1, n] = 0.0 if v is None else float((v.flatten(1).norm(dim=1) / norm).mean())

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
