"""Exercise self-checks (pcnet.experiments.exercises): each of chapter 1's reference solutions, run on the
chapter's toy network, is called right; wrong answers are told how far off; bad calls name the fix."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import pcnet
from pcnet.experiments import exercises

W1 = np.array([[1.0, 0.0], [0.5, 1.0]])
W2 = np.array([[0.5, 0.5]])
V1 = np.array([[0.8, 0.2], [0.4, 0.6]])
V2 = np.array([[1.0], [0.5]])


@torch.no_grad()
def _toy(**options):
    """Chapter 1's toy network (1x1 convolutions in float64) and its input x."""
    def conv(m):
        c = nn.Conv2d(m.shape[1], m.shape[0], 1, bias=False, dtype=torch.float64)
        c.weight.copy_(torch.tensor(m)[:, :, None, None])
        return c

    def deconv(m):
        d = nn.ConvTranspose2d(m.shape[1], m.shape[0], 1, bias=False, dtype=torch.float64)
        d.weight.copy_(torch.tensor(m).T[:, :, None, None])
        return nn.Sequential(d)
    head = nn.Linear(1, 2, bias=False, dtype=torch.float64)
    head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    toy = nn.Sequential(conv(W1), conv(W2), nn.Flatten(), head)
    net = pcnet.predify(toy, layers=["0", "1"], input_shape=(2, 1, 1), decoders=[deconv(V1), deconv(V2)],
                        beta=0.8, lam=0.1, alpha=0.1, **options)
    return toy, net, torch.tensor([1.0, 0.5], dtype=torch.float64).reshape(1, 2, 1, 1)


@torch.no_grad()
def _solutions():
    """Each exercise's answer, computed as its collapsed solution in chapter 1 computes it."""
    toy, toy_net, x = _toy()
    out = {}
    toy_net.set_hparams(beta=1, lam=0, alpha=0)
    logits = toy_net(x, timesteps=5)
    out["ch1.identity_steps"] = (logits - logits[0]).abs().max()
    toy_net.set_hparams(beta=0.8, lam=0.1, alpha=0)
    out["ch1.fixed_point"] = toy_net.run(x, timesteps=200, feedback="zero", record=("states",)).states[0][-1]
    mean_net = pcnet.predify(toy, layers=["0", "1"], input_shape=(2, 1, 1),
                             decoders=copy.deepcopy(list(toy_net.decoders)), error_scale="mean")
    x100 = x.expand(100, -1, -1, -1)
    out["ch1.mean_scale_ratio"] = toy_net.scale_of(0, x100) / mean_net.scale_of(0, x100)
    c1, c2 = int((V1[:, 0] != 0).sum()), int((V2[:, 0] != 0).sum())
    out["ch1.largest_alpha"] = min(np.sqrt(c1) / np.linalg.eigvalsh(V1.T @ V1).max(), np.sqrt(c2) / (V2.T @ V2).item())

    def rectified(state, **inputs):
        return pcnet.dynamics.update_state(state, **inputs).clamp_min(0)
    rect = pcnet.predify(toy, layers=["0", "1"], input_shape=(2, 1, 1), decoders=copy.deepcopy(list(toy_net.decoders)),
                         beta=0.8, lam=0.1, alpha=0.1, update=rectified)
    out["ch1.rectified_top"] = rect.run(-x, timesteps=20, record=("states",)).states[1][-1].item()
    return out


def test_every_reference_solution_is_called_right():
    solutions = _solutions()
    assert set(solutions) == {k for k in exercises.ANSWERS if k.startswith("ch1.")}  # ch2: the test below
    for name, answer in solutions.items():
        result = exercises.check(name, answer)
        assert result.right and bool(result) and repr(result).startswith("right"), (name, result)


def test_wrong_answers_are_told_how_far_off_without_the_reference():
    near = exercises.check("ch1.largest_alpha", 1.2)
    assert not near and "off by 6.07 %" in repr(near) and "close" in repr(near)
    assert "1.13" not in repr(near)  # the reference value is not given away
    far = exercises.check("ch1.fixed_point", [1.0, 0.0])
    assert not far.right and "off by 100 %" in far.message and "check the setup" in far.message
    zero = exercises.check("ch1.rectified_top", -0.976)
    assert not zero.right and "off by 0.976 in absolute terms" in zero.message
    shape = exercises.check("ch1.fixed_point", [0.9, 0.9, 0.9])
    assert not shape.right and "has shape (2,), your answer (3,)" in shape.message
    assert "NaN" in exercises.check("ch1.mean_scale_ratio", float("nan")).message
    assert exercises.check("ch1.fixed_point", torch.full((1, 2, 1, 1), 8 / 9)).right  # a state's shape is fine


def test_bad_calls_name_the_fix():
    with pytest.raises(KeyError, match=r"no exercise 'ch1.nope'; the exercises with a check are \["):
        exercises.check("ch1.nope", 1.0)
    with pytest.raises(TypeError, match="the answer must be a number, a list of numbers"):
        exercises.check("ch1.largest_alpha", "1.13")


def test_chapter_one_names_every_check_it_has_and_no_other():
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parent.parent / "book" / "01_predictive_coding.ipynb").read_text()
    named = set(re.findall(r'exercises\.check\(\\"(ch1\.\w+)\\"', text))
    assert named == {k for k in exercises.ANSWERS if k.startswith("ch1.")}
    assert "from pcnet.experiments import exercises" in text


def test_chapter_two_block_macs_match_the_models_summary_and_the_chapter():
    import pathlib

    from pcnet.experiments import models

    rows = {r["name"]: r["macs"] for r in models.summary(models.build_backbone("fmnist_vgg"), input_shape=(1, 28, 28))}
    assert exercises.check("ch2.block1_macs", [rows["features.0"], rows["features.3"]]).right  # the table's numbers
    assert exercises.check("ch2.block1_macs", [16 * 28 * 28 * 1 * 9, 16 * 28 * 28 * 16 * 9]).right  # by hand
    assert not exercises.check("ch2.block1_macs", [112896, 1806337]).right  # exact: one multiply-add off is wrong
    text = (pathlib.Path(__file__).resolve().parent.parent / "book" / "02_backbone.ipynb").read_text()
    assert 'exercises.check(\\"ch2.block1_macs\\"' in text and "exercises, models" in text
