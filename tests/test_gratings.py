"""data.gratings: the offline synthetic data set of the appendix "Your own network"."""
import math

import pytest
import torch

from pcnet.experiments import data


def test_gratings_shapes_range_and_determinism():
    ds = data.gratings(50, seed=3)
    x, y = ds.tensors
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (50,) and y.dtype == torch.long
    assert 0 <= x.min() and x.max() <= 1 and set(y.tolist()) <= set(range(10))
    again = data.gratings(50, seed=3).tensors
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    assert not torch.equal(data.gratings(50, seed=4).tensors[0], x)
    assert data.gratings(4, size=16, classes=3).tensors[0].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="gratings needs n >= 1"):
        data.gratings(0)


def test_the_class_is_the_orientation_a_matched_filter_recovers():
    """Each image's class is the orientation k * 18 degrees: the best-matching complex grating (any phase, 2-4
    cycles) over the ten orientations gives the label for (almost) every image."""
    x, y = data.gratings(200, seed=0).tensors
    grey = x.double().mean(1)  # (n, 32, 32)
    grey = grey - grey.mean((1, 2), keepdim=True)
    axis = torch.linspace(0, 1, 32, dtype=torch.float64)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    scores = torch.zeros(200, 10, dtype=torch.float64)
    for k in range(10):
        along = cols * math.cos(k * math.pi / 10) + rows * math.sin(k * math.pi / 10)  # (32, 32)
        for cycles in torch.arange(2.0, 4.01, 0.25):
            template = torch.exp(2j * math.pi * cycles * along)  # (32, 32), every phase at once via the modulus
            match = (grey.to(template.dtype) * template).sum((1, 2)).abs()  # (n,)
            scores[:, k] = torch.maximum(scores[:, k], match)
    assert (scores.argmax(1) == y).float().mean() >= 0.95
