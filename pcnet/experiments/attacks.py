"""Adaptive adversarial evaluation of predictive-coding dynamics (chapter 6).

The attacked function is exactly the evaluated one: ``TimestepLogits(net, timestep=T)`` maps images in [0, 1]
to the logits of timestep T of ``net(x, timesteps=T)`` (same readout, same preprocessing: none beyond the
network's own). Its ``gradient`` option chooses what the attacker differentiates:

* ``"full"``: white-box through the whole unrolled dynamics in pcnet's differentiable mode (the error-gradient
  term is built with ``create_graph=True``, so its dependence on the input is differentiated too);
* ``"feedforward"``: BPDA, forward = the dynamics, backward = the plain feedforward pass (t = 0);
* ``"last-k"``: forward = the dynamics, backward through the last ``k`` timesteps only (states at T - k are
  treated as constants; truncated backpropagation through time);
* ``"detached-error"``: forward = the dynamics, backward with the error-gradient term treated as a constant,
  as the original Predify package computes it (``autograd.grad`` without ``create_graph``).

The BPDA variants are a custom forward/backward: ``surrogate + (value - surrogate).detach()`` has the value of
the dynamics and the gradient of the surrogate. The last two are options of the core's own run
(``truncate``, ``detach_error``; see :meth:`pcnet.PredNet.run`), read out by :meth:`pcnet.PredNet.at_timestep`.
:func:`attacked_model` names every model chapter 6 attacks (``MODELS``): t = 0, the dynamics, the four content
controls and the BPDA variants.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from pcnet.experiments import devices
from pcnet.experiments.optional import require

GRADIENTS = ("full", "feedforward", "last-k", "detached-error")
ATTACKS = ("apgd-ce", "apgd-dlr", "square", "pgd", "bim-targeted")
MODELS = (  # what chapter 6 attacks: attacked_model(net, name)
    "t0", "dynamics", "zero", "shuffled", "mean", "rescale", "bpda-feedforward", "bpda-last-k",
    "bpda-detached-error")


class TimestepLogits(nn.Module):
    """``f(x) = net(x, timesteps=timestep, feedback=feedback)[timestep]``: logits (B, K) for x (B, C, H, W) in [0, 1].

    Works on a frozen deep copy of ``net`` (the caller's network is not touched). ``gradient`` picks the
    backward pass (module docstring); the forward value is always the exact dynamics.
    """

    def __init__(self, net: nn.Module, *, timestep: int, feedback: str = "prediction", gradient: str = "full",
                 k: int | None = None):
        super().__init__()
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        if gradient == "last-k" and (k is None or not 1 <= k <= timestep):
            raise ValueError(f"gradient='last-k' needs 1 <= k <= timestep={timestep}, got k={k}")
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.timestep, self.feedback, self.gradient, self.k = int(timestep), feedback, gradient, k
        self.dynamics = self.net.at_timestep(self.timestep, feedback=feedback)  # x -> (B, K)
        options = {"last-k": {"truncate": self.timestep - (k or 0)}, "detached-error": {"detach_error": True}}
        self.surrogate = (self.net.at_timestep(0) if gradient == "feedforward"
                          else self.net.at_timestep(self.timestep, feedback=feedback, **options.get(gradient, {})))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient == "full" or not torch.is_grad_enabled() or self.timestep == 0:
            return self.dynamics(x)  # (B, K)
        with torch.no_grad():
            value = self.dynamics(x)  # (B, K), fast path
        surrogate = self.surrogate(x)  # (B, K): what backpropagation differentiates
        return surrogate + (value - surrogate).detach()  # value of the dynamics, gradient of the surrogate


def assert_deterministic(model: nn.Module, x: torch.Tensor) -> None:
    """Raise if two evaluations of ``model`` on ``x`` differ in any bit (then EOT would be needed)."""
    with torch.no_grad():
        a, b = model(x), model(x)
    if not torch.equal(a, b):
        raise AssertionError(f"model is not deterministic (max difference {float((a - b).abs().max()):.3g}); "
                             "use EOT (average gradients over the randomness) in the attacks")


def _project(delta: torch.Tensor, *, eps: float, norm: str) -> torch.Tensor:
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)
    return delta * (eps / flat).clamp(max=1.0).view(-1, *[1] * (delta.dim() - 1))


def pgd(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf", steps: int = 20,
        step_size: float | None = None, random_start: bool = False, seed: int = 0):
    """Projected gradient descent on cross-entropy (Madry et al.), recording accuracy after every iteration.

    Returns (x_adv (B, C, H, W), curve (steps + 1,)): curve[i] is the accuracy when each sample keeps the first
    misclassifying iterate found within i iterations (so the curve never rises); x_adv holds those iterates.
    """
    if norm not in ("Linf", "L2"):
        raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0 (0: no attack, the clean accuracy), got {steps!r}")
    if isinstance(eps, (bool, str)) or not 0 <= float(eps) < float("inf"):  # numpy and 0-dim tensors too
        raise ValueError(f"eps must be a finite number >= 0 (in pixel units of [0, 1]), got {eps!r}")
    step_size = step_size if step_size is not None else 2.5 * eps / max(steps, 1)
    delta = torch.zeros_like(x)
    if random_start:
        g = torch.Generator(device="cpu").manual_seed(seed)
        delta = _project((torch.rand(x.shape, generator=g) * 2 - 1).to(x) * eps, eps=eps, norm=norm)
        delta = (x + delta).clamp(0, 1) - x
    with torch.no_grad():
        fooled = model(x + delta).argmax(-1) != y  # (B,)
    best, curve = (x + delta).clone(), [1 - fooled.float().mean()]
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if norm == "Linf":
                step = grad.sign()
            else:
                step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            delta = _project(delta + step_size * step, eps=eps, norm=norm)
            delta = (x + delta).clamp(0, 1) - x
            new = model(x + delta).argmax(-1) != y  # (B,)
            take = new & ~fooled
            best[take] = (x + delta)[take]
            fooled |= new
            curve.append(1 - fooled.float().mean())
    return best.detach(), torch.stack(curve).cpu()


def make_attack(name: str, model: nn.Module, *, eps: float, norm: str = "Linf", steps: int = 50, seed: int = 0,
                n_queries: int = 1000):
    """A torchattacks attack on ``model`` (images in [0, 1]): ``attack(x, y) -> x_adv``.

    ``apgd-ce`` / ``apgd-dlr``: AutoAttack's APGD with cross-entropy / DLR loss; ``square``: gradient-free
    Square attack with ``n_queries``; ``pgd``: torchattacks PGD / PGDL2 with a random start; ``bim-targeted``:
    the targeted BIM of the Predify paper (L-inf), target a random wrong class drawn with ``seed``.
    """
    ta = require("torchattacks", purpose="attacks.make_attack")
    if norm not in ("Linf", "L2"):
        raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    if name == "apgd-ce":
        return ta.APGD(model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce")
    if name == "apgd-dlr":
        return ta.APGD(model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed, loss="dlr")
    if name == "square":
        return ta.Square(model, norm=norm, eps=eps, n_queries=n_queries, n_restarts=1, seed=seed)
    if name == "pgd":
        cls = ta.PGD if norm == "Linf" else ta.PGDL2
        return cls(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    if name == "bim-targeted":
        if norm != "Linf":
            raise ValueError("the paper's BIM is an L-inf attack; use norm='Linf'")
        attack = ta.BIM(model, eps=eps, alpha=max(eps / steps * 2.5, 1 / 255 / 4), steps=steps)

        def targets(x, y):
            g = torch.Generator().manual_seed(seed)
            shift = torch.randint(1, _n_classes(model, x), y.shape, generator=g).to(y.device)  # drawn on the CPU
            return (y + shift) % _n_classes(model, x)

        attack.set_mode_targeted_by_function(targets)
        return attack
    raise ValueError(f"unknown attack {name!r}; choose one of {ATTACKS}")


def _n_classes(model, x):
    with torch.no_grad():
        return model(x[:1]).shape[-1]


def attack_correct(model: nn.Module, attack, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 100,
                   evaluate: nn.Module | None = None):
    """Per-sample correctness (N,) of ``evaluate`` (default ``model``) on ``attack(x, y)`` built in batches;
    returns (correct bool (N,) on the CPU, x_adv where ``x`` is). ``evaluate`` differs from ``model`` for transfer
    attacks. Batches run on ``model``'s device and dtype."""
    evaluate = model if evaluate is None else evaluate
    device, dtype = devices.of(model)
    advs, correct = [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device, dtype), y[i:i + batch_size].to(device)  # (B,C,H,W), (B,)
        adv = attack(xb, yb).detach()
        with torch.no_grad():
            correct.append((evaluate(adv).argmax(-1) == yb).cpu())
        advs.append(adv.to(x.device))
    return torch.cat(correct), torch.cat(advs)


def worst_case(correct: dict) -> tuple[torch.Tensor, list]:
    """Per-sample worst case over attacks: a sample counts as robust only if no attack fooled it.

    ``correct``: {attack name: bool (N,)}; returns (robust bool (N,), names of the attacks that achieved the
    lowest accuracy on their own)."""
    if not isinstance(correct, dict) or not correct:
        raise ValueError(f"worst_case needs {{attack name: per-sample correctness (N,)}} for at least one attack, got "
                         f"{correct!r}")
    names = list(correct)
    outcomes = {n: torch.as_tensor(correct[n]) for n in names}  # numpy arrays and lists too
    shapes = {n: tuple(v.shape) for n, v in outcomes.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1 or \
            any(v.dtype != torch.bool for v in outcomes.values()):
        raise ValueError(f"worst_case: every attack needs a bool tensor (N,) of per-sample correctness on the same "
                         f"samples; got shapes {shapes} and dtypes {sorted({str(v.dtype) for v in outcomes.values()})}")
    correct = outcomes
    robust = torch.stack([correct[n] for n in names]).all(0)  # (N,)
    accs = {n: float(correct[n].float().mean()) for n in names}
    low = min(accs.values())
    return robust, [n for n in names if accs[n] == low]


def check_perturbation(x: torch.Tensor, x_adv: torch.Tensor, *, eps: float, norm: str, tol: float = 1e-5) -> None:
    """Raise if ``x_adv`` leaves [0, 1] or the eps-ball around ``x`` (a broken attack would over-report)."""
    if x_adv.min() < -tol or x_adv.max() > 1 + tol:
        raise AssertionError("adversarial images leave [0, 1]")
    d = (x_adv - x).flatten(1)
    size = d.abs().max(1).values if norm == "Linf" else d.norm(dim=1)
    if (size > eps * (1 + 1e-4) + tol).any():
        raise AssertionError(f"perturbation of size {float(size.max()):.4g} exceeds eps={eps} ({norm})")


class Rescaled(nn.Module):
    """The rescale control as a (B, K) model: the backbone with each PCoder output times ``scale``."""

    def __init__(self, net, *, scale):
        super().__init__()
        self.net, self.scale = net, scale  # float, or one per PCoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import pcnet
        return pcnet.rescaled_forward(self.net, x, scale=self.scale)  # (B, K)


class BatchFeedback(nn.Module):
    """A feedback control that mixes predictions across the batch ("shuffled", "mean") as a (B, K) model.

    Attacks re-batch the images they still attack, so the attacked batch can shrink below the evaluated block;
    a batch of one has no other image to take a prediction from, and there the model falls back to the image's
    own prediction (what "shuffled" and "mean" give for B = 1 by their definition). Only the attack's search
    sees these smaller batches: the reported correctness is evaluated on the whole block.
    """

    def __init__(self, net, *, timesteps: int, feedback: str, gradient: str = "full", k: int | None = None):
        super().__init__()
        self.control = TimestepLogits(net, timestep=timesteps, feedback=feedback, gradient=gradient, k=k)
        self.single = TimestepLogits(net, timestep=timesteps, gradient=gradient, k=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.control if x.shape[0] >= 2 else self.single)(x)  # (B, K)


def is_model(name: str) -> bool:
    """Whether :func:`attacked_model` knows ``name``: one of MODELS, or a BPDA variant on a feedback control,
    ``"bpda-<gradient>@<zero|shuffled|mean>"`` (the control's exact value, a surrogate gradient)."""
    base, _, control = str(name).partition("@")
    return name in MODELS or (base.startswith("bpda-") and base in MODELS and control in ("zero", "shuffled", "mean"))


def attacked_model(net, name: str, *, timesteps: int, last_k: int = 1) -> nn.Module:
    """The (B, K) model that ``name`` (one of MODELS, or ``bpda-<gradient>@<control>``: see :func:`is_model`)
    attacks; its forward value is the evaluated function."""
    import pcnet
    if "@" in name and is_model(name):
        base, control = name.split("@")
        gradient = base[len("bpda-"):]
        k = last_k if gradient == "last-k" else None
        if control == "zero":
            return TimestepLogits(net, timestep=timesteps, feedback="zero", gradient=gradient, k=k)
        return BatchFeedback(net, timesteps=timesteps, feedback=control, gradient=gradient, k=k)
    if name == "t0":
        return TimestepLogits(net, timestep=0)
    if name == "dynamics":
        return TimestepLogits(net, timestep=timesteps)
    if name == "zero":
        return TimestepLogits(net, timestep=timesteps, feedback=name)
    if name in ("shuffled", "mean"):
        return BatchFeedback(net, timesteps=timesteps, feedback=name)
    if name == "rescale":
        hp = net.hparams()
        scale = [pcnet.dynamics.fixed_point_scale(beta=float(b), lam=float(l)) for b, l in zip(hp["beta"], hp["lam"])]
        return Rescaled(net, scale=scale).eval()
    if name.startswith("bpda-"):
        gradient = name[len("bpda-"):]
        return TimestepLogits(net, timestep=timesteps, gradient=gradient,
                                      k=last_k if gradient == "last-k" else None)
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
