"""Robustness metrics per timestep: accuracy grids, corruption error CE, mCE and their normalised curves.

Errors are fractions in [0, 1]. Following Hendrycks & Dietterich (2019) without their AlexNet normalisation:

    CE_c(t)  = sum_s err_{c,s}(t)            corruption error of corruption c at timestep t
    mCE(t)   = mean_c CE_c(t)
    CE_c(t) / CE_c(0)  and  mCE(t) / mCE(0)  normalised to *our own* feedforward pass (t = 0), as in Predify.
"""
from __future__ import annotations

import torch

from pcnet.experiments import devices


def class_labels(labels, *, n: int | None = None, what: str = "labels") -> torch.Tensor:
    """``labels`` as an integer tensor of shape (N,), checked once where labels enter (a rule of issue 20).

    Labels of shape (N, 1) are squeezed to (N,) (they would otherwise broadcast against predictions (N,) to an
    (N, N) comparison and give a wrong accuracy); a list or numpy array is converted. Any other shape, a float
    or string dtype, or a length other than ``n`` is a ValueError or TypeError naming the fix.
    """
    try:
        t = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{what} must be class indices, a tensor of shape (N,); got {type(labels).__name__}") from None
    if t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]  # (N,): a column of labels
    if t.dim() != 1:
        raise ValueError(f"{what} must have shape (N,), one class index per image; got {tuple(t.shape)}: pass "
                         f"labels.flatten() if it holds one label per image, or class indices instead of one-hot rows "
                         f"(labels.argmax(1))")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{what} must be integer class indices, got dtype {t.dtype}; convert with labels.long()")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{what} has {t.shape[0]} entries for {n} images (logits batch); pass one label per image")
    return t


def accuracy_per_timestep(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy of logits ``(T+1, B, K)`` (or ``(B, K)``) against ``labels`` (B,) (or (B, 1),
    :func:`class_labels`); returns (T+1,) or scalar."""
    logits = torch.as_tensor(logits)
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must have shape (T+1, B, K) or (B, K), got {tuple(logits.shape)}")
    labels = class_labels(labels, n=logits.shape[-2])  # (B,)
    return (logits.argmax(-1) == labels.to(logits.device)).float().mean(-1).cpu()


@torch.no_grad()
def correct_per_timestep(predict, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 500,
                         dtype=torch.float32, device=None) -> torch.Tensor:
    """Run ``predict(x) -> logits (T+1, B, K)`` (or (B, K)) over ``images`` in batches; returns a bool tensor of
    per-sample correctness (T+1, N) (or (1, N) for a plain classifier) on the CPU. uint8 images are scaled to
    [0, 1]. Batches run on ``device``; by default on ``predict``'s device and dtype when it is a module, else
    where the images are. ``labels``: (N,) (or (N, 1), :func:`class_labels`)."""
    labels = class_labels(labels, n=len(images))  # (N,)
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        x = x.to(dtype) / 255 if x.dtype == torch.uint8 else x
        if device is not None:
            x = x.to(device)  # (B, ...)
        elif isinstance(predict, torch.nn.Module):
            x = x.to(*devices.of(predict))  # (B, ...) where the model is
        logits = predict(x)
        logits = logits[None] if logits.ndim == 2 else logits  # (T+1, B, K)
        out.append((logits.argmax(-1).cpu() == labels[i:i + batch_size].cpu()))
    return torch.cat(out, dim=1)  # (T+1, N)


def accuracy_grid(predict, cset: dict, *, batch_size: int = 500, progress: bool = True,
                  reset=None, device=None) -> torch.Tensor:
    """Accuracy (C, S, T+1) of ``predict`` on a corrupted set from ``pcnet.experiments.corruptions.corrupted_set`` (names in
    insertion order). Without ``reset`` all sets run through ``predict`` in large mixed batches; with
    ``reset()`` (test-time adaptation restarting from the source model) each corruption x severity is one
    separate batch, with ``reset()`` called before it. ``device``: as in :func:`correct_per_timestep`."""
    from tqdm.auto import tqdm
    names, labels = list(cset["images"]), cset["labels"]
    stack = torch.stack([cset["images"][n] for n in names])  # (C, S, N, ...)
    c, s, n = stack.shape[:3]
    if reset is None:
        flat = stack.flatten(0, 2)  # (C*S*N, ...)
        parts = []
        for i in tqdm(range(0, len(flat), batch_size), desc="accuracy grid", disable=not progress, leave=False):
            parts.append(correct_per_timestep(predict, flat[i:i + batch_size], labels.repeat(c * s)[i:i + batch_size],
                                              batch_size=batch_size, device=device))
        correct = torch.cat(parts, dim=1)  # (T+1, C*S*N)
        return correct.view(-1, c, s, n).float().mean(-1).permute(1, 2, 0)  # (C, S, T+1)
    rows = []
    for imgs_c in tqdm(stack, desc="accuracy grid", disable=not progress, leave=False):
        per_sev = []
        for imgs in imgs_c:  # (N, ...) one corruption x severity
            reset()
            per_sev.append(correct_per_timestep(predict, imgs, labels, batch_size=len(imgs),
                                                device=device).float().mean(-1))
        rows.append(torch.stack(per_sev))
    return torch.stack(rows)  # (C, S, T+1)


def corruption_error(acc: torch.Tensor) -> torch.Tensor:
    """CE_c(t) = sum_s err_{c,s}(t) from accuracies (C, S, T+1) (or (..., C, S, T+1)); returns (..., C, T+1)."""
    return (1 - acc).sum(-2)


def mce(acc: torch.Tensor) -> torch.Tensor:
    """mCE(t) = mean_c CE_c(t); from (..., C, S, T+1) returns (..., T+1)."""
    return corruption_error(acc).mean(-2)


def normalised_ce(acc: torch.Tensor, *, reference: torch.Tensor | None = None) -> torch.Tensor:
    """CE_c(t) / CE_c(ref): by default ref is t = 0 of the same run; pass ``reference`` accuracies
    (..., C, S, >=1) to normalise by another model's t = 0 (e.g. the backbone, for test-time adaptation)."""
    ce = corruption_error(acc)
    ref = corruption_error(acc if reference is None else reference)[..., :1]
    return ce / ref


def normalised_mce(acc: torch.Tensor, *, reference: torch.Tensor | None = None) -> torch.Tensor:
    """mCE(t) / mCE(ref) with ref as in ``normalised_ce``; returns (..., T+1)."""
    ref = mce(acc if reference is None else reference)[..., :1]
    return mce(acc) / ref
