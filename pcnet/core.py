"""PredNet: a frozen backbone with PCoders at chosen layers, run as predictive-coding dynamics.

The backbone's own forward computes each F_n: at every timestep it runs once with temporary forward hooks that
replace the output of PCoder n's module by its updated state e_n(t+1) (eq. eq-update), so the next segment
already sees the updated layer below and the head turns e_N(t+1) into logits. The methods here are the
reference implementation, written to read like the equations and differentiable end to end; without gradients
:mod:`pcnet.fast` computes the same dynamics with less work (tests/test_fast_path.py keeps the two equal).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import dynamics, fast, saving, wiring
from .trace import Trace, _Recorder  # noqa: F401 (Trace: part of this module's interface)

RECORDABLE = ("errors", "states", "predictions", "terms")
FEEDBACK = ("prediction", "zero", "shuffled", "mean")
MAX_TIMESTEPS = 100_000  # a run keeps the logits of every timestep; far beyond any settling time of the book


class PredNet(nn.Module):
    """A predified backbone; build it with :func:`predify`.

    Its own methods (``help(PredNet)`` lists those of ``nn.Module`` after them):

    - running: ``forward`` (``net(x, timesteps=T)``: logits (T+1, B, K)), ``run`` (a :class:`Trace` with errors,
      states, predictions, terms), ``at_timestep`` (one timestep's logits as a module, for attacks)
    - hyperparameters: ``set_hparams``, ``hparams``, ``hparam_parameters``
    - feedback weights: ``save_feedback`` (reload with ``pcnet.load_feedback``), ``load_state_dict`` (checks the
      hyperparameters first), ``train`` (decoders only), ``unwrap`` (the backbone)
    - the reference dynamics, step by step: ``feedforward``, ``predict``, ``step``, ``update_state`` (eq.
      eq-update or the network's own rule), ``feedback_of``, ``coefficients``, ``scale_of``, ``needs_error``,
      ``needs_prediction``, ``pc_modules``
    - checks: ``check_input``, ``check_finite``

    Concurrency: the temporary hooks of a call act only in the thread that made the call, so the same
    PredNet called from several threads, several PredNets on one backbone, and a plain ``backbone(x)`` in
    another thread all give the results they give alone. Every call runs the backbone in eval mode
    (BatchNorm running statistics used, never updated) whatever its training flag, which is restored
    afterwards; while a call runs, other threads see the backbone in eval mode too.

    Half precision (``net.half()``, or ``evaluate_dynamics(..., precision="fp16")``) runs; the finiteness checks
    sum in float32, so a large batch of small states is no false alarm. Against float32 on a 64-image batch of
    ``pshallow_cifar`` (5 timesteps; tests/test_bad_inputs_20.py) the stated tolerance is: top-1 agreement at
    least 95 % at every timestep and a max abs logit difference at most 1 % of the largest float32 logit
    (measured on CPU: 100 % and 0.1 %).
    """

    def __init__(self, backbone, *, layers, input_shape, shapes, decoders, hyper, error_scale, projective_fields,
                 update=None):
        super().__init__()
        self.backbone = backbone
        self.layers = list(layers)
        self.input_shape = tuple(input_shape)
        self.shapes = [tuple(s) for s in shapes]
        self.decoders = nn.ModuleList(decoders)
        self.hyper = hyper
        self.error_scale = error_scale  # a name or fn(*, projective_field, batch, numel) (dynamics.error_scale)
        self.update_rule = update  # None: eq. eq-update; else fn(state, **inputs) (see update_state)
        self.register_buffer("projective_fields", torch.tensor(projective_fields, dtype=torch.float64))

    def extra_repr(self) -> str:
        values = {k: [round(v, 6) for v in t.tolist()] for k, t in self.hparams().items()}
        return (f"layers={self.layers}, input_shape={self.input_shape},\nbeta={values['beta']}, lam={values['lam']}, "
                f"alpha={values['alpha']}, error_scale={self.error_scale!r}, learnable={self.hyper.learnable}"
                + ("" if self.update_rule is None else f", update={getattr(self.update_rule, '__name__', self.update_rule)}"))

    # ----------------------------------------------------------------- public API
    def forward(self, x: torch.Tensor, *, timesteps: int = 0, feedback: str = "prediction", **options) -> torch.Tensor:
        """Logits at every timestep, shape (timesteps+1, B, K); index 0 is the plain feedforward pass."""
        return self.run(x, timesteps=timesteps, feedback=feedback, **options).logits

    @wiring.dynamics_call  # backbone in eval mode whatever its flag; torch.compile's grad-mode limit explained
    def run(self, x, *, timesteps: int = 0, feedback: str = "prediction", record: Sequence[str] = (),
            detach_error: bool = False, truncate: int = 0, reference: bool = False) -> Trace:
        """Run the dynamics and return a :class:`Trace` with the quantities named in ``record``.

        ``feedback``: "prediction" (eq. eq-update), or a control of the feedback's content (:meth:`feedback_of`):
        "zero", "shuffled" or "mean", at the same beta, lam, alpha. What backpropagation sees
        (grad mode): ``detach_error`` makes the error term a constant (as the original package computes it);
        ``truncate=k`` makes the states of timesteps 1..k constants (backpropagation through the last T-k steps).
        Without gradients :mod:`pcnet.fast` runs, unless ``reference`` asks for the methods of this class.
        """
        self.check_input(x)
        steps, record = self._check_options(timesteps, feedback, record, truncate)
        if feedback in ("shuffled", "mean") and x.shape[0] < 2:
            raise ValueError(f"feedback={feedback!r} mixes predictions across the batch; pass at least 2 images "
                             f"(random batches of 100 or more for 'mean'), got a batch of {x.shape[0]}")
        use_reference = reference or torch.is_grad_enabled()
        rec = _Recorder(record, steps, len(self.layers), copy=not use_reference)
        if use_reference:
            logits, states = self._run_reference(x, steps, feedback, rec, detach_error=detach_error, truncate=truncate)
        else:
            logits, states = fast.run(self, x, steps=steps, feedback=feedback, recorder=rec)
        if rec.wants_predictions:
            with torch.no_grad():
                rec.add_predictions(x, states, [d(s) for d, s in zip(self.decoders, states)], steps)
        return rec.trace(torch.stack(logits), states)

    def at_timestep(self, timestep: int, **options) -> "Readout":
        """An ``nn.Module`` mapping x (B, C, H, W) to the logits (B, K) of ``timestep`` (for attack libraries,
        ``F.cross_entropy`` and other tools that expect one logit tensor). ``options`` go to :meth:`run`."""
        return Readout(self, timestep=timestep, **options)

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

    def save_feedback(self, path, *, note: str = "") -> str:
        """Write the decoders' weights to one file (atomic, with its own sha256; :func:`pcnet.saving.save_feedback`);
        load them with ``pcnet.load_feedback(net, path)``. Returns the sha256."""
        return saving.save_feedback(self, path, note=note)

    def unwrap(self) -> nn.Module:
        """The original backbone, unchanged (no hooks stay attached)."""
        return self.backbone

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Loading (``load_state_dict``, also ``strict=False`` or through a module holding this network) first checks
        the hyperparameters: invalid ones (beta + lam > 1, NaN learnable values) are refused before anything of this
        network is loaded (this runs before its children load), so decoders and backbone stay as they were."""
        error = self.hyper.state_dict_error(state_dict, prefix + "hyper.")
        if error is not None:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}: {error}; nothing was "
                               f"loaded (fix or drop the hyper.* entries, or set them with net.set_hparams)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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

    # ----------------------------------------------------------------- the reference dynamics
    def _run_reference(self, x, steps, feedback, rec, *, detach_error, truncate):
        coef = self.coefficients()
        states, logit = self.feedforward(x)  # e_n(0) and the logits of t = 0
        logits = [logit]
        for t in range(1, steps + 1):
            predictions, grads = self.predict(x, states, coef, always=rec.wants_predictions, detach_error=detach_error)
            rec.add_states(states)
            rec.add_predictions(x, states, predictions, t - 1)
            states, logit = self.step(x, states, self.feedback_of(predictions, feedback), grads, coef,
                                      detach=t <= truncate, rec=rec, t=t)
            logits.append(logit)
        return logits, states

    def feedforward(self, x):
        """t = 0: the plain backbone pass, recording e_n(0) = F_n(e_{n-1}(0)); returns (states, logits (B, K))."""
        states = []

        def record(n, out):
            self._check_order(n, len(states))
            states.append(out)

        with wiring.hooked(self.pc_modules(), record):
            logit = self.backbone(x)  # (B, K)
        self._check_all_ran(len(states))
        return states, logit

    def predict(self, x, states, coef, *, always=False, detach_error=False):
        """Each PCoder's prediction D_n(e_n(t)) of the layer below and its error gradient (eq. eq-error-grad);
        None where no term of eq. eq-update uses them (unless ``always``)."""
        predictions, grads = [], []
        for n, (decoder, state, target) in enumerate(zip(self.decoders, states, [x] + states[:-1])):
            prediction = grad = None
            if self.needs_error(n, coef):
                prediction, grad = dynamics.error_gradient(decoder, state, target, scale=self.scale_of(n, target),
                                                           create_graph=torch.is_grad_enabled() and not detach_error)
            elif always or self.needs_prediction(n, coef):
                prediction = decoder(state)  # (B, C_{n-1}, H_{n-1}, W_{n-1})
            self.check_finite(grad, f"error gradient of PCoder {n} ({self.layers[n]!r})")
            predictions.append(prediction)
            grads.append(grad)
        return predictions, grads

    def step(self, x, states, feedback, grads, coef, *, detach=False, rec=None, t=1):
        """One timestep, eq. eq-update: the backbone runs once with each PCoder's output replaced by its new state.

        ``feedback[n]`` is D_{n+1}(e_{n+1}(t)) (None at the top), ``grads[n]`` the error gradient (None: no term).
        """
        new_states, grad_mode = [], torch.is_grad_enabled()

        def replace(n, feedforward):  # feedforward = F_n(e_{n-1}(t+1)): the layer below is already updated
            self._check_order(n, len(new_states))
            if grad_mode and (not torch.is_grad_enabled() or wiring.in_checkpoint()):
                raise RuntimeError(f"layer {self.layers[n]!r} runs inside torch.utils.checkpoint (or with gradients "
                                   f"disabled) in the backbone's forward: backward would recompute it without the "
                                   f"PCoder's update (a CheckpointError, or wrong gradients); run the dynamics under "
                                   f"torch.no_grad(), or turn the backbone's gradient checkpointing off")
            new = self.update_state(n, states[n], feedforward=feedforward, prediction=feedback[n],
                                    error_grad=grads[n], **coef["at"][n])  # (B, C_n, H_n, W_n)
            self.check_finite(new, f"state of PCoder {n} ({self.layers[n]!r})", t)
            if rec is not None:
                rec.add_terms(n, t, new, feedforward, feedback[n], states[n], grads[n], coef)
            new_states.append(new.detach() if detach else new)
            return new_states[-1]

        with wiring.hooked(self.pc_modules(), replace):
            logit = self.backbone(x)  # (B, K)
        self._check_all_ran(len(new_states))
        return new_states, logit

    # ----------------------------------------------------------------- shared by both implementations
    def pc_modules(self) -> list[nn.Module]:
        """The backbone modules whose outputs are the PCoder states, in forward order."""
        return [self.backbone.get_submodule(name) for name in self.layers]

    def coefficients(self) -> dict:
        """beta, lam, alpha per PCoder as ``coef["at"][n]`` (floats; 0-dim tensors when learnable in grad mode)."""
        values = self.hyper.values()
        learnable = self.hyper.learnable and torch.is_grad_enabled()
        if learnable:
            columns = {k: list(v.unbind()) for k, v in values.items()}  # 0-dim tensors, differentiable
        else:
            columns = {k: [float(c) for c in v.detach().tolist()] for k, v in values.items()}
        at = [{k: columns[k][n] for k in ("beta", "lam", "alpha")} for n in range(len(self.layers))]
        return {"at": at, "learnable": learnable}

    @staticmethod
    def needs_error(n, coef) -> bool:
        return coef["learnable"] or coef["at"][n]["alpha"] != 0

    @staticmethod
    def needs_prediction(n, coef) -> bool:
        """D_n(e_n) is the feedback of PCoder n-1: needed when that PCoder's lam is not 0."""
        return n > 0 and coef["at"][n - 1]["lam"] != 0

    @staticmethod
    def feedback_of(predictions, feedback: str) -> list:
        """The feedback term of each PCoder n: D_{n+1}(e_{n+1}(t)), None at the top; or a control of its content:
        ``"zero"`` (none), ``"shuffled"`` (the prediction made for the next image of the batch) or ``"mean"`` (the
        batch's mean prediction, the same for every image: with random batches an estimate of the data set's)."""
        controls = {"prediction": lambda p: p, "zero": lambda p: None,
                    "shuffled": lambda p: p.roll(1, dims=0),  # (B, C, H, W): image b gets image b-1's
                    "mean": lambda p: p.mean(0, keepdim=True).expand_as(p)}  # (B, C, H, W)
        return [None if p is None else controls[feedback](p) for p in predictions[1:]] + [None]

    def update_state(self, n: int, state, *, out=None, **inputs) -> torch.Tensor:
        """e_n(t+1) of PCoder n, shape of ``state``: eq. eq-update (:func:`pcnet.dynamics.update_state`, into the
        buffer ``out`` when given) or this network's own rule, ``predify(..., update=fn)``, called as
        ``fn(state, *, feedforward, prediction, error_grad, beta, lam, alpha)`` with the arguments of
        :func:`pcnet.dynamics.update_state` (``prediction`` None at the top PCoder, ``error_grad`` None when alpha
        is 0); it returns a new tensor and changes none of its inputs (``out`` is then unused)."""
        if self.update_rule is None:
            return dynamics.update_state(state, out=out, **inputs)
        new = self.update_rule(state, **inputs)
        if not isinstance(new, torch.Tensor) or new.shape != state.shape:
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise ValueError(f"the update rule {getattr(self.update_rule, '__name__', self.update_rule)!r} returned "
                             f"{got} for PCoder {n} ({self.layers[n]!r}); it must return the new state, a tensor of "
                             f"the state's shape {tuple(state.shape)}")
        return new

    def scale_of(self, n: int, target: torch.Tensor) -> float:
        """The error scale s_n of eq. eq-error-grad for PCoder n (see :func:`pcnet.dynamics.error_scale`)."""
        return dynamics.error_scale(mode=self.error_scale, projective_field=float(self.projective_fields[n]),
                                    batch=target.shape[0], numel=target[0].numel())

    # ----------------------------------------------------------------- checks
    def _check_order(self, n, done):
        if n > done:
            self._check_all_ran(done)
        if n != done:
            raise RuntimeError(f"layer {self.layers[n]!r} ran twice or out of order in one forward pass")

    def _check_all_ran(self, done):
        """A clear error if one of the PCoder layers was skipped (grad mode ran no dynamics, no-grad crashed)."""
        if done < len(self.layers):
            raise RuntimeError(f"layer {self.layers[done]!r} did not run in this forward pass: the backbone's forward "
                               f"skipped it (e.g. on a branch that depends on the input or a flag), so its PCoder has "
                               f"no state; put PCoders only on modules that run in every forward pass")

    @staticmethod
    def check_finite(tensor, what, t=None):
        # one reduction, accumulated in float32 or wider (a float16 sum overflows at 65504 while every value is
        # small): any inf or NaN (or an overflowing float32 sum, itself a sign of divergence) makes it non-finite
        wide = torch.float32 if tensor is not None and tensor.dtype in (torch.float16, torch.bfloat16) else None
        if tensor is not None and not torch.isfinite(tensor.sum(dtype=wide)):
            when = "" if t is None else f" at timestep {t}"
            raise FloatingPointError(f"non-finite values in the {what}{when}; lower alpha (or check the "
                                     f"input and decoder weights)")

    def check_input(self, x):
        """Raise a clear error unless ``x`` is a float tensor (B, C, H, W) of the network's shape, dtype, device."""
        shape = ", ".join(map(str, self.input_shape))
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor of shape (batch, {shape}), got {type(x).__name__}")
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
    def _check_options(timesteps, feedback, record, truncate):
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 0:
            raise ValueError(f"timesteps must be an integer >= 0, got {timesteps!r}")
        if timesteps > MAX_TIMESTEPS:  # refused before anything is allocated per timestep
            raise ValueError(f"timesteps={timesteps} is above the limit pcnet.core.MAX_TIMESTEPS = {MAX_TIMESTEPS} "
                             f"(every timestep's logits are kept); run fewer timesteps")
        if feedback not in FEEDBACK:
            raise ValueError(f"feedback must be one of {FEEDBACK}, got {feedback!r}")
        if isinstance(truncate, bool) or not isinstance(truncate, int) or not 0 <= truncate <= max(timesteps - 1, 0):
            raise ValueError(f"truncate must be an integer in [0, timesteps - 1] = [0, {max(timesteps - 1, 0)}], "
                             f"got {truncate!r}")
        record = (record,) if isinstance(record, str) else tuple(record)
        unknown = [r for r in record if r not in RECORDABLE]
        if unknown:
            raise ValueError(f"cannot record {unknown}; choose from {RECORDABLE}")
        return timesteps, record


class Readout(nn.Module):
    """x (B, C, H, W) -> the logits (B, K) of one timestep of a PredNet's dynamics (see :meth:`PredNet.at_timestep`)."""

    def __init__(self, net: PredNet, *, timestep: int, **options):
        super().__init__()
        if isinstance(timestep, bool) or not isinstance(timestep, int) or timestep < 0:
            raise ValueError(f"timestep must be an integer >= 0, got {timestep!r}")
        self.net, self.timestep, self.options = net, timestep, options

    def extra_repr(self) -> str:
        return f"timestep={self.timestep}" + "".join(f", {k}={v!r}" for k, v in self.options.items())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.run(x, timesteps=self.timestep, **self.options).logits[self.timestep]  # (B, K)
