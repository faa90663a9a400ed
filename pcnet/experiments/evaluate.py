"""Evaluation helpers: input corruptions, per-image correctness per timestep, a trained model's accuracy and
reconstruction loss, state distances, term sizes.

Everything here takes a network (mostly a predified one, ``pcnet.predify``) and a dataset or loader of
``(image, label)`` pairs with images in [0, 1]. Intervals and paired tests live in
:mod:`pcnet.experiments.stats`. Nothing runs at import.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from pcnet.experiments import devices
from pcnet.experiments.data import as_tensors, images_of
from pcnet.experiments.metrics import class_labels
from pcnet.experiments.optional import require

Corruption = Callable[..., torch.Tensor]  # corrupt(x, *, generator) -> x_corrupted
TERM_NAMES = ("feedforward", "feedback", "memory", "error")


# --------------------------------------------------------------------------- corruptions
def _as_generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


def _check_unit_range(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a float image tensor in [0, 1], got {type(x).__name__}; convert with "
                        f"torch.as_tensor(x)")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name}: expected a float image tensor in [0, 1], got dtype {x.dtype}; convert with x.float() / 255")
    if not torch.isfinite(x).all():  # a NaN passes the range test below
        raise ValueError(f"{name}: images have {int((~torch.isfinite(x)).sum())} NaN or infinite pixels; replace "
                         f"them (e.g. torch.nan_to_num(x)) or drop those images")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name}: images must lie in [0, 1] (got min {x.min().item():.3g}, max {x.max().item():.3g}); "
                         "apply noise before any normalisation")


def gaussian_noise(x: torch.Tensor, *, sigma: float, generator: torch.Generator | int | None = None) -> torch.Tensor:
    """Add N(0, sigma^2) noise to images in [0, 1] and clip back to [0, 1].

    ``sigma`` is in pixel units of the [0, 1] range. ``generator`` (a torch.Generator or an int seed)
    makes the noise deterministic; noise is drawn on the CPU so results do not depend on the device.
    """
    _check_unit_range(x, "gaussian_noise")
    if not sigma >= 0:
        raise ValueError(f"gaussian_noise: sigma must be >= 0, got {sigma}")
    noise = torch.randn(x.shape, generator=_as_generator(generator), dtype=x.dtype)  # same shape as x
    return (x + sigma * noise.to(x.device)).clamp_(0.0, 1.0)


def salt_pepper(x: torch.Tensor, *, amount: float, generator: torch.Generator | int | None = None) -> torch.Tensor:
    """Set a fraction ``amount`` of pixels to 0 (pepper) or 1 (salt), half each on average.

    A pixel is one spatial location: all channels of a hit pixel get the same value. Input (B, C, H, W) in [0, 1].
    """
    _check_unit_range(x, "salt_pepper")
    if not 0 <= amount <= 1:
        raise ValueError(f"salt_pepper: amount must lie in [0, 1], got {amount}")
    if x.dim() != 4:
        raise ValueError(f"salt_pepper: expected images of shape (B, C, H, W), got {tuple(x.shape)}")
    g = _as_generator(generator)
    b, _, h, w = x.shape
    hit = torch.rand((b, 1, h, w), generator=g) < amount  # (B,1,H,W) which pixels are replaced
    salt = torch.rand((b, 1, h, w), generator=g) < 0.5  # (B,1,H,W) salt (1) or pepper (0)
    hit, salt = hit.to(x.device), salt.to(x.device)
    return torch.where(hit, salt.to(x.dtype), x)


# --------------------------------------------------------------------------- data plumbing
def _loader(data: Dataset | DataLoader, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if not isinstance(data, Dataset):
        raise TypeError(f"expected a Dataset or DataLoader of (image, label), got {type(data).__name__}")
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def corrupt_dataset(data: Dataset | DataLoader, corrupt: Corruption | None, *, seed: int = 0,
                    batch_size: int = 512) -> TensorDataset:
    """Materialise ``data`` (optionally corrupted, deterministically from ``seed``) as a TensorDataset.

    Use this once per noise condition, then evaluate many networks or hyperparameters on the very same
    noisy images (a paired comparison).
    """
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for x, y in _loader(data, batch_size):
        xs.append(x if corrupt is None else corrupt(x, generator=g))
        ys.append(y)
    return TensorDataset(torch.cat(xs), torch.cat(ys))


@contextmanager
def hparams_set(net, **values):
    """Temporarily set ``beta``/``lam``/``alpha`` on ``net`` (validated); the old values return on exit."""
    old = {k: v.clone() for k, v in net.hparams().items()}
    net.set_hparams(**values)
    try:
        yield net
    finally:
        net.set_hparams(**old)


# --------------------------------------------------------------------------- accuracy per timestep
@dataclass
class DynamicsResult:
    """What :func:`evaluate_dynamics` measured over a dataset.

    correct: (T+1, n) bool, whether image i is classified correctly at timestep t.
    errors: (T+1, N) mean per-sample reconstruction error of each PCoder (empty if not recorded).
    terms: name -> (T, N) mean relative size of each update term (empty if not recorded).
    """
    correct: torch.Tensor
    errors: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def accuracy(self) -> torch.Tensor:
        """(T+1,) accuracy at every timestep."""
        return self.correct.float().mean(dim=1)


@torch.no_grad()
def evaluate_dynamics(net, data: Dataset | DataLoader, *, timesteps: int, corrupt: Corruption | None = None,
                      feedback: str = "prediction", batch_size: int = 256, seed: int = 0,
                      record: Sequence[str] = (), progress: bool = True,
                      precision: str | None = None) -> DynamicsResult:
    """Run the dynamics over a whole dataset; per-image correctness (T+1, n) plus batch-weighted means of ``record``.

    ``corrupt(x, generator=g)`` is applied to each batch with one generator seeded by ``seed``
    (same seed and batch order => same noisy images). ``record`` may contain "errors" and "terms".
    Batches go to the network's device and dtype; ``precision`` ("bf16", "fp16") runs under autocast.
    ``feedback``: "prediction" or a control of :meth:`pcnet.PredNet.run` ("zero", "shuffled", "mean"), or
    "rescale", the feedforward control (:func:`pcnet.rescaled_forward` at beta / (beta + lam) per PCoder, eq.
    eq-fixed-point): one pass without timesteps, whose outcome is repeated at every t, so that ``correct`` is
    (T+1, n) for every control and ``correct[-1]`` compares at t = T.
    """
    bad = set(record) - {"errors", "terms"}
    if bad:
        raise ValueError(f"record may contain 'errors' and 'terms', got {sorted(bad)}")
    if timesteps < 0:
        raise ValueError(f"timesteps must be >= 0, got {timesteps}")
    if feedback == "rescale" and record:
        raise ValueError(f"the rescale control is one feedforward pass without errors or terms; drop "
                         f"record={tuple(record)} or evaluate a feedback mode")
    import pcnet

    scale = _fixed_point_scales(net) if feedback == "rescale" else None
    (device, dtype), g = devices.of(net), torch.Generator().manual_seed(seed)
    correct, err_sum, term_sum, n_seen = [], None, {}, 0
    loader = _loader(data, batch_size)
    for x, y in tqdm(loader, desc=f"dynamics ({feedback})", leave=False, disable=not progress):
        if corrupt is not None:
            x = corrupt(x, generator=g)
        x, y = x.to(device, dtype), class_labels(y, n=x.shape[0]).to(device)  # (B,): an (B, 1) column is squeezed
        with devices.autocast(device, precision):
            if scale is not None:  # one pass, the same at every t: (T+1, B, K)
                logits = pcnet.rescaled_forward(net, x, scale=scale).unsqueeze(0).expand(timesteps + 1, -1, -1)
            elif record:
                trace = net.run(x, timesteps=timesteps, feedback=feedback, record=tuple(record))
                logits = trace.logits  # (T+1, B, K)
            else:
                logits = net(x, timesteps=timesteps, feedback=feedback)  # (T+1, B, K)
        correct.append((logits.argmax(-1) == y).cpu())  # (T+1, B)
        b = x.shape[0]
        if "errors" in record:
            e = trace.errors.float().sum(dim=-1).cpu()  # (T+1, N) summed over the batch
            err_sum = e if err_sum is None else err_sum + e
        if "terms" in record:
            for k, v in trace.terms.items():  # v: (T, N) batch mean
                term_sum[k] = term_sum.get(k, 0) + v.detach().float().cpu() * b
        n_seen += b
    if n_seen == 0:
        raise ValueError("the dataset is empty")
    return DynamicsResult(correct=torch.cat(correct, dim=1),
                          errors=None if err_sum is None else err_sum / n_seen,
                          terms={k: v / n_seen for k, v in term_sum.items()})


def _fixed_point_scales(net) -> list[float]:
    """beta / (beta + lam) per PCoder (eq. eq-fixed-point) at the net's current values."""
    from pcnet import dynamics

    h = net.hparams()
    return [dynamics.fixed_point_scale(beta=b, lam=lam) for b, lam in zip(h["beta"].tolist(), h["lam"].tolist())]


@torch.no_grad()
def correct_of(fn: Callable[[torch.Tensor], torch.Tensor], data: Dataset | DataLoader, *,
               corrupt: Corruption | None = None, batch_size: int = 256, seed: int = 0,
               device: torch.device | str | None = None, progress: bool = True) -> torch.Tensor:
    """(n,) bool correctness of any classifier ``fn(x) -> logits (B, K)``, e.g. ``pcnet.rescaled_forward``.

    Uses the same corruption stream as :func:`evaluate_dynamics` for equal ``seed`` and batch size. Batches
    run on ``device``; by default on ``fn``'s device and dtype when it is a module, else on the CPU.
    """
    if device is None:
        device, dtype = devices.of(fn) if isinstance(fn, torch.nn.Module) else (torch.device("cpu"), None)
    else:
        dtype = None
    g, out = torch.Generator().manual_seed(seed), []
    for x, y in tqdm(_loader(data, batch_size), desc="feedforward", leave=False, disable=not progress):
        if corrupt is not None:
            x = corrupt(x, generator=g)
        logits = fn(x.to(device=device, dtype=dtype))  # (B, K)
        out.append((logits.argmax(-1).cpu() == class_labels(y, n=x.shape[0]).cpu()))  # (B,)
    return torch.cat(out)


# --------------------------------------------------------------------------- trained models: accuracy, reconstruction loss
@torch.no_grad()
def classifier_accuracy(model: nn.Module, dataset, *, batch_size: int = 1000) -> tuple[float, torch.Tensor]:
    """(accuracy, predicted labels (N,)) of `model` in eval mode on `dataset`."""
    was_training = model.training
    model.eval()
    x, y = as_tensors(dataset)
    device, dtype = devices.of(model)
    predictions = torch.cat([model(xb.to(device, dtype)).argmax(1).cpu() for xb in x.split(batch_size)])  # (N,)
    model.train(was_training)
    return (predictions == y).float().mean().item(), predictions


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, *, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predictions.long()  # (N,)
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


@torch.no_grad()
def feedback_loss_on(net, dataset, *, batch_size: int = 500) -> torch.Tensor:
    """Per-layer reconstruction loss (eq-feedback-loss) of `net` averaged over `dataset` (images, a dataset of
    images or (image, label) pairs, or a DataLoader: see `data.images_of`): Tensor(N)."""
    import pcnet

    x = images_of(dataset, what="dataset")  # (N, C, H, W)
    device, dtype = devices.of(net)
    per_layer = [pcnet.feedback_loss(net, xb.to(device, dtype))[1] * len(xb) for xb in x.split(batch_size)]  # each (N,)
    return (torch.stack(per_layer).sum(0) / len(x)).cpu()


@torch.no_grad()
def feedback_baseline_loss(net, dataset, *, batch_size: int = 500) -> torch.Tensor:
    """Per-layer loss (eq-feedback-loss) of the best constant prediction, the dataset mean of every target
    value: the targets' variance, averaged over their values. Tensor(N)."""
    x, _ = as_tensors(dataset)
    device, dtype = devices.of(net)
    sums = squares = None
    for xb in x.split(batch_size):
        xb = xb.to(device, dtype)  # (B,C,H,W) where the network is
        states = net.run(xb, timesteps=0, record=("states",)).states  # N tensors (1,B,...)
        targets = [xb.double()] + [s[0].double() for s in states[:-1]]  # e_{n-1}(0), each (B,...)
        batch_sums, batch_squares = [t.sum(0) for t in targets], [(t**2).sum(0) for t in targets]
        sums = batch_sums if sums is None else [a + b for a, b in zip(sums, batch_sums)]
        squares = batch_squares if squares is None else [a + b for a, b in zip(squares, batch_squares)]
    return torch.stack([(q / len(x) - (s / len(x)) ** 2).mean() for s, q in zip(sums, squares)]).float().cpu()


# --------------------------------------------------------------------------- representations
def correlation_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - Pearson correlation between ``a[i]`` and ``b[i]`` (each flattened), per sample: (B,).

    0 for identical patterns (up to affine scale), 1 for uncorrelated, 2 for anti-correlated.
    NaN where a sample is constant (its correlation is undefined).
    """
    if a.shape != b.shape:
        raise ValueError(f"correlation_distance: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    a = a.reshape(a.shape[0], -1).double()  # (B, D)
    b = b.reshape(b.shape[0], -1).double()  # (B, D)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))  # (B,)
    return (1.0 - r).float()


@torch.no_grad()
def state_distance_over_time(net, clean: torch.Tensor, noisy: torch.Tensor, *, timesteps: int,
                             reference: str = "clean-t", feedback: str = "prediction") -> torch.Tensor:
    """Mean correlation distance between the states for noisy and for clean images: (T+1, N).

    Both runs use the same dynamics (``feedback``). reference="clean-t": compare noisy e_n(t) with the
    clean state at the same timestep; "clean-t0": with the clean feedforward state e_n(0) (a fixed target).
    """
    if reference not in ("clean-t0", "clean-t"):
        raise ValueError(f"reference must be 'clean-t0' or 'clean-t', got {reference!r}")
    if clean.shape != noisy.shape:
        raise ValueError(f"clean and noisy batches differ in shape: {tuple(clean.shape)} vs {tuple(noisy.shape)}")
    dev, dtype = devices.of(net)
    tc = net.run(clean.to(dev, dtype), timesteps=timesteps, feedback=feedback, record=("states",))
    tn = net.run(noisy.to(dev, dtype), timesteps=timesteps, feedback=feedback, record=("states",))
    out = torch.empty(timesteps + 1, len(tc.states))
    for n, (sc, sn) in enumerate(zip(tc.states, tn.states)):  # each (T+1, B, ...)
        for t in range(timesteps + 1):
            ref = sc[0] if reference == "clean-t0" else sc[t]
            out[t, n] = correlation_distance(sn[t], ref).nanmean().item()
    return out


# --------------------------------------------------------------------------- term sizes
def terms_table(terms: dict[str, torch.Tensor], layers: Sequence[str]):
    """Long-format pandas DataFrame (term, layer, timestep, relative_size) from ``trace.terms``-like dicts.

    ``terms[name]`` is (T, N): mean over images of ||term|| / ||new state|| at update t -> t+1.
    """
    pd = require("pandas", purpose="evaluate.terms_table")
    rows = []
    for name, v in terms.items():
        if v.dim() != 2 or v.shape[1] != len(layers):
            raise ValueError(f"terms[{name!r}] should be (T, {len(layers)}), got {tuple(v.shape)}")
        for t in range(v.shape[0]):
            for n, layer in enumerate(layers):
                rows.append({"term": name, "layer": layer, "timestep": t + 1, "relative_size": float(v[t, n])})
    return pd.DataFrame(rows)
