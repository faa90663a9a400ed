"""Self-checks for the chapters' exercises: ``exercises.check("ch1.fixed_point", my_answer)`` says whether an
answer is right, wrong, or how far off it is, without printing the reference value.

Each reference answer is the number (or array) the collapsed solution computes; ``tests/test_exercises.py``
runs each solution's code and checks that it is called right.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Answer:
    """A reference answer: ``value`` (a number or a nested list), the relative tolerance, and what it is."""
    value: object
    what: str
    rtol: float = 1e-3
    atol: float = 1e-6


ANSWERS = {
    "ch1.identity_steps": Answer(0.0, "largest |logits[t] - logits[0]| over t at beta=1, lam=0, alpha=0"),
    "ch1.fixed_point": Answer([8 / 9, 8 / 9], "e_1 after 200 zero-feedback steps at beta=0.8, lam=0.1, alpha=0"),
    "ch1.mean_scale_ratio": Answer(200 / math.sqrt(2), "default error scale / 'mean' scale (batch of 100)"),
    "ch1.largest_alpha": Answer(2 * math.sqrt(2) / 2.5, "largest stable alpha at beta = lam = 0"),
    "ch1.rectified_top": Answer(0.0, "e_2(20) of the rectified network on -x"),
    "ch2.block1_macs": Answer([16 * 28 * 28 * 9, 16 * 28 * 28 * 16 * 9],
                              "multiply-adds per image of block 1's two convolutions", rtol=0, atol=0.5),
}


@dataclass(frozen=True)
class Result:
    """What :func:`check` found: ``right`` and a sentence (shown as the cell's output in a notebook)."""
    right: bool
    message: str

    def __repr__(self) -> str:
        return self.message

    def __bool__(self) -> bool:
        return self.right


def _as_array(answer, name: str) -> np.ndarray:
    try:
        import torch

        if isinstance(answer, torch.Tensor):
            answer = answer.detach().cpu().double().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        if isinstance(answer, (str, bytes)):
            raise TypeError("a string")
        return np.asarray(answer, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"check({name!r}, ...): the answer must be a number, a list of numbers, a numpy array or a "
                        f"tensor, got {type(answer).__name__}") from err


def check(name: str, answer) -> Result:
    """Compare ``answer`` with the reference answer of exercise ``name`` (see :data:`ANSWERS`).

    Right when every value is within the tolerance (relative ``rtol``, absolute ``atol`` near zero); otherwise
    the message says how far off (relative error, or absolute when the reference is 0) or what shape was expected.
    """
    if name not in ANSWERS:
        raise KeyError(f"no exercise {name!r}; the exercises with a check are {sorted(ANSWERS)}")
    ref = ANSWERS[name]
    expected, got = np.asarray(ref.value, dtype=float), _as_array(answer, name)
    if got.size == expected.size and got.shape != expected.shape:
        got = got.reshape(expected.shape)  # e.g. a (1, 2, 1, 1) state for a 2-vector answer
    if got.shape != expected.shape:
        return Result(False, f"wrong: {ref.what} has shape {expected.shape}, your answer {got.shape}")
    if not np.isfinite(got).all():
        return Result(False, f"wrong: your answer has NaN or infinite values ({ref.what})")
    if np.allclose(got, expected, rtol=ref.rtol, atol=ref.atol):
        return Result(True, f"right: {ref.what}")
    scale = np.abs(expected).max()
    if scale > ref.atol:
        off = float(np.abs(got - expected).max() / scale)
        return Result(False, f"not yet: off by {100 * off:.3g} % of the reference ({ref.what}); "
                             f"{'close - check the last step' if off < 0.1 else 'check the setup'}")
    off = float(np.abs(got - expected).max())
    return Result(False, f"not yet: off by {off:.3g} in absolute terms ({ref.what})")
