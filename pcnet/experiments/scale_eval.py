"""Chapter 7's evaluations of an ImageNet PredNet: per-timestep accuracy under Gaussian noise beside the feedback
controls and the test-time baselines, ImageNet-C (mCE both ways), and adaptive attacks; their verdicts.

Every function keeps per-image correctness, so each verdict is a paired test over images
(:mod:`pcnet.experiments.verdicts`). Methods and their shapes (``T`` the horizon, ``n`` the images):

* ``dynamics``: the predictive-coding dynamics, (T+1, n); ``zero``, ``shuffled``, ``mean``: the same dynamics
  with the prediction replaced by zero, by another image's prediction, by the batch-mean prediction (same
  beta, lam, alpha; :meth:`pcnet.PredNet.run`), (T+1, n);
* ``rescale``: one feedforward pass with each PCoder's output scaled by beta / (beta + lam), (1, n);
* ``BN adaptation``, ``TENT`` (online): the backbone adapted at test time (:mod:`pcnet.experiments.tta`), (1, n).

Nothing runs at import.
"""
from __future__ import annotations

import functools

import torch
from torch.utils.data import DataLoader, Dataset

from . import tta
from .evaluate import correct_of, evaluate_dynamics, gaussian_noise
from .verdicts import Verdict, bootstrap_verdict, holm_family, paired_proportions

__all__ = ["FEEDBACKS", "noise_study", "noise_family", "accuracy_table", "corruption_correct", "tta_corruption_correct",
           "corruption_summary", "corruption_family", "attack_study", "attack_family", "plot_noise"]

FEEDBACKS = {"dynamics": "prediction", "zero": "zero", "shuffled": "shuffled", "mean": "mean"}
TTA = {"BN adaptation": lambda backbone: tta.BNAdapt(backbone), "TENT": lambda backbone: tta.Tent(backbone)}


def _has_batchnorm(module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _rescale(net) -> torch.Tensor:
    """beta / (beta + lam) per PCoder: the fixed point of the zero-prediction control (eq. eq-fixed-point)."""
    h = net.hparams()
    return h["beta"] / (h["beta"] + h["lam"])  # (N,)


class _Fn(torch.nn.Module):
    """A function as a module (for :class:`devices.Autocast`)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _corrupt(sigma: float):
    return None if sigma == 0 else functools.partial(gaussian_noise, sigma=sigma)


def noise_study(net, data: Dataset, *, sigmas, timesteps: int, batch_size: int, seed: int = 0, tta_methods=(),
                progress: bool = True, precision: str | None = None) -> dict:
    """Per-image correctness {sigma: {method: bool (T+1 or 1, n)}} on ``data`` (images in [0, 1], labels in the
    network's classes) under N(0, sigma^2) pixel noise. Every method sees the same noisy images (one noise stream,
    seeded by ``seed``, in the same batches), so all comparisons are paired. ``tta_methods``: names of ``TTA``;
    skipped (with a note in ``result["skipped"]``) when the backbone has no BatchNorm (VGG16). ``precision``
    ("bf16", "fp16"): every method runs under autocast (:func:`devices.autocast`)."""
    import pcnet

    from .devices import Autocast

    unknown = [m for m in tta_methods if m not in TTA]
    if unknown:
        raise ValueError(f"tta_methods may contain {list(TTA)}, got {unknown}")
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    skipped = [] if _has_batchnorm(net.backbone) else list(tta_methods)
    out = {"sigmas": list(sigmas), "timesteps": timesteps, "n": len(data), "batch_size": batch_size,
           "skipped": {m: "the backbone has no BatchNorm layer" for m in skipped}, "correct": {}}
    scale = _rescale(net)
    for sigma in sigmas:
        corrupt, row = _corrupt(sigma), {}
        for name, feedback in FEEDBACKS.items():
            row[name] = evaluate_dynamics(net, loader, timesteps=timesteps, corrupt=corrupt, feedback=feedback,
                                          seed=seed, progress=progress, precision=precision).correct  # (T+1, n)
        rescaled = Autocast(_Fn(lambda x: pcnet.rescaled_forward(net, x, scale=scale)), precision=precision)
        row["rescale"] = correct_of(rescaled, loader, corrupt=corrupt,
                                    seed=seed, device=next(net.parameters()).device, progress=progress)[None]  # (1, n)
        for name in tta_methods:
            if name not in skipped:  # a fresh copy of the source model for every noise level
                row[name] = correct_of(Autocast(TTA[name](net.backbone), precision=precision), loader, corrupt=corrupt, seed=seed, progress=progress,
                                       device=next(net.parameters()).device)[None]  # (1, n)
        out["correct"][sigma] = row
    return out


def accuracy_table(study: dict):
    """Accuracy (%) per noise level and method at t = 0, 1, ..., T (single-pass methods: one value)."""
    import pandas as pd

    rows = []
    for sigma, row in study["correct"].items():
        for name, c in row.items():
            acc = 100 * c.float().mean(-1)  # (T+1,) or (1,)
            rows.append({"sigma": sigma, "method": name, **{f"t={t}": round(float(a), 1) for t, a in enumerate(acc)}})
    return pd.DataFrame(rows).set_index(["sigma", "method"])


def noise_family(study: dict) -> list[Verdict]:
    """One Holm family over every noise level: dynamics at T vs t = 0, and vs each control and baseline."""
    verdicts = []
    for sigma, row in study["correct"].items():
        dyn = row["dynamics"]
        verdicts.append(paired_proportions(dyn[-1], dyn[0], contrast=f"σ={sigma}: dynamics t=T − t=0"))
        for name, c in row.items():
            if name != "dynamics":
                verdicts.append(paired_proportions(dyn[-1], c[-1], contrast=f"σ={sigma}: dynamics − {name} (t=T)"))
    return holm_family(verdicts)


def corruption_correct(net, sets: dict, *, timesteps: int, batch_size: int, feedback: str = "prediction",
                       progress: bool = True, precision: str | None = None) -> torch.Tensor:
    """Per-image correctness (C, S, T+1, n) on {(corruption, severity): dataset} (all sets on the same images)."""
    names = list(dict.fromkeys(c for c, _ in sets))
    severities = list(dict.fromkeys(s for _, s in sets))
    rows = [torch.stack([evaluate_dynamics(net, DataLoader(sets[c, s], batch_size=batch_size), timesteps=timesteps,
                                           feedback=feedback, progress=progress, precision=precision).correct
                          for s in severities])
            for c in names]  # each (S, T+1, n)
    return torch.stack(rows)  # (C, S, T+1, n)


def tta_corruption_correct(net, sets: dict, *, method: str, batch_size: int, seed: int = 0,
                           progress: bool = True, precision: str | None = None) -> torch.Tensor:
    """Per-image correctness (C, S, 2, n) of a single-pass method — a test-time baseline (a name of ``TTA``) or
    ``"rescale"`` — on the sets of :func:`corruption_correct`, stacked after the backbone's (index 0 = the backbone
    at t = 0, 1 = the method), so :func:`corruption_family` normalises it by the backbone. Each corruption x
    severity starts from a fresh copy of the source model and sees the images in one seeded random order
    (class-mixed batches; TENT runs online)."""
    import pcnet
    from torch.utils.data import Subset

    from .devices import Autocast

    if method not in (*TTA, "rescale"):
        raise ValueError(f"method must be one of {[*TTA, 'rescale']}, got {method!r}")
    scale = _rescale(net)
    make = (lambda: _Fn(lambda x: pcnet.rescaled_forward(net, x, scale=scale))) if method == "rescale" else \
        (lambda: TTA[method](net.backbone))

    names = list(dict.fromkeys(c for c, _ in sets))
    severities = list(dict.fromkeys(s for _, s in sets))
    device = next(net.parameters()).device
    rows = []
    for c in names:
        for s in severities:
            order = torch.randperm(len(sets[c, s]), generator=torch.Generator().manual_seed(seed))  # (n,)
            loader = DataLoader(Subset(sets[c, s], order.tolist()), batch_size=batch_size)
            shuffled = torch.stack([correct_of(Autocast(m, precision=precision), loader, device=device,
                                               progress=progress) for m in (net.backbone, make())])
            correct = torch.empty_like(shuffled)  # (2, n)
            correct[:, order] = shuffled  # back to the sets' order
            rows.append(correct)
    return torch.stack(rows).reshape(len(names), len(severities), 2, -1)  # (C, S, 2, n)


def _mce_hd(correct: torch.Tensor) -> torch.Tensor:
    """Hendrycks & Dietterich's mCE at T over t = 0: mean_c CE_c(T) / CE_c(0); (..., C, S, T+1, n) -> (...)."""
    from .metrics import normalised_ce

    return normalised_ce(correct.float().mean(-1))[..., -1].mean(-1)


def _ratio_of_means(correct: torch.Tensor) -> torch.Tensor:
    """Predify's ratio of means mCE(T) / mCE(0); (..., C, S, T+1, n) -> (...)."""
    from .metrics import normalised_mce

    return normalised_mce(correct.float().mean(-1))[..., -1]


def _alexnet_ratio(correct: torch.Tensor, *, names) -> torch.Tensor:
    """AlexNet-normalised mCE at T over at t = 0; (..., C, S, T+1, n) -> (...)."""
    from .imagenet_c import alexnet_ce

    mce = alexnet_ce(correct, names).mean(-2)  # (..., T+1)
    return mce[..., -1] / mce[..., 0]


def corruption_summary(correct: torch.Tensor, *, names=None) -> dict:
    """The mCE curves over t (each (T+1,)) from correctness (C, S, T+1, n): both definitions relative to t = 0 and,
    given the corruption ``names``, Hendrycks & Dietterich's AlexNet-normalised mCE (over the common corruptions
    among them; the extra four have no AlexNet error, :func:`imagenet_c.alexnet_ce`)."""
    from .imagenet_c import alexnet_ce
    from .metrics import normalised_ce, normalised_mce

    acc = correct.float().mean(-1)  # (C, S, T+1)
    out = {"mCE (mean of ratios)": normalised_ce(acc).mean(-2), "ratio of means": normalised_mce(acc)}
    if names is not None:
        out["mCE (AlexNet-normalised)"] = alexnet_ce(correct, names).mean(-2)  # (T+1,)
    return out


def corruption_family(correct: dict, *, n_boot: int = 2000, names=None) -> list[Verdict]:
    """Holm family of paired BCa bootstrap verdicts on the mCE summaries at T (null 1 = no change) for each
    feedback of ``correct`` {feedback: (C, S, T+1, n)}; with the corruption ``names`` also the AlexNet-normalised
    mCE at T over the one at t = 0 (:func:`imagenet_c.alexnet_ce`)."""
    summaries = (("mCE (mean of ratios) t=T / t=0", _mce_hd), ("ratio of means t=T / t=0", _ratio_of_means))
    if names is not None:
        summaries += (("AlexNet mCE t=T / t=0", functools.partial(_alexnet_ratio, names=list(names))),)
    def contrast(name, label):  # a test-time baseline's two rows are (backbone, baseline): "/ backbone"
        return f"{name}: {label if name in FEEDBACKS else label.replace('t=T / t=0', '/ backbone')}"
    verdicts = [bootstrap_verdict(stat, c, contrast=contrast(name, label), null=1.0, higher_is_better=False,
                                  n_boot=n_boot) for name, c in correct.items() for label, stat in summaries]
    return holm_family(verdicts)


def attack_study(net, images: torch.Tensor, labels: torch.Tensor, *, eps, timesteps: int, steps: int,
                 batch_size: int, attacks=("apgd-ce", "apgd-dlr"), seed: int = 0, precision: str | None = None) -> dict:
    """Robust correctness {eps: {"t=0": (n,), "t=T": (n,), "per_attack": {attack: {"t=0", "t=T"}}}} at each
    L-inf budget of ``eps`` (in [0, 1] pixel units): "t=0" / "t=T" are the worst case over ``attacks`` (an image
    counts as robust only if every attack fails on it). White-box: the gradient runs through the whole unrolled
    dynamics; with ``precision`` ("bf16", "fp16") the forward and its backward run under autocast (the logits are
    cast back to float32)."""
    from .attacks import TimestepLogits, attack_correct, check_perturbation, make_attack
    from .devices import Autocast

    out = {"eps": list(eps), "n": len(labels), "attacks": list(attacks), "steps": steps, "correct": {}}
    for e in eps:
        per_attack = {}
        for attack in attacks:
            per_attack[attack] = {}
            for t in (0, timesteps):
                model = Autocast(TimestepLogits(net, timestep=t, gradient="full"), precision=precision)
                correct, adv = attack_correct(model, make_attack(attack, model, eps=e, steps=steps, seed=seed),
                                              images, labels, batch_size=batch_size)
                check_perturbation(images, adv, eps=e, norm="Linf")
                per_attack[attack]["t=0" if t == 0 else "t=T"] = correct  # (n,)
        worst = {k: torch.stack([r[k] for r in per_attack.values()]).all(0) for k in ("t=0", "t=T")}  # (n,)
        out["correct"][e] = {**worst, "per_attack": per_attack}
    return out


def attack_family(study: dict) -> list[Verdict]:
    """Holm family over the budgets: robust accuracy at t = T minus at t = 0 (exact McNemar, Newcombe)."""
    return holm_family([paired_proportions(row["t=T"], row["t=0"], contrast=f"ε={e * 255:.0f}/255: t=T − t=0")
                        for e, row in study["correct"].items()])


def plot_noise(study: dict, *, title: str = ""):
    """Accuracy over timesteps, one panel per noise level (at most 3 a row): the dynamics, the three feedback
    controls, and the single-pass methods as horizontal lines."""
    import matplotlib.pyplot as plt

    from .plotting import MAX_WIDTH, color

    sigmas = list(study["correct"])
    cols = min(3, len(sigmas))
    rows = -(-len(sigmas) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(MAX_WIDTH, 2.6 * rows + 0.6), squeeze=False, sharey=True)
    styles = {"dynamics": dict(color=color("pcnet"), lw=2), "zero": dict(color=color("zero")),
              "shuffled": dict(color=color("feedback"), ls="--"), "mean": dict(color=color("memory"), ls=":")}
    for ax, sigma in zip(axes.flat, sigmas):
        for name, c in study["correct"][sigma].items():
            acc = 100 * c.float().mean(-1)  # (T+1,) or (1,)
            if name in styles:
                ax.plot(range(len(acc)), acc, label=name, **styles[name])
            else:
                ax.axhline(float(acc[0]), label=name, lw=1, ls="-." if name == "rescale" else (0, (1, 1)),
                           color=color("rescaled") if name == "rescale" else None)
        ax.set(title=f"σ = {sigma}", xlabel="timestep t")
    for ax in list(axes.flat)[len(sigmas):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("top-1 accuracy (%)")
    axes[0, 0].legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
