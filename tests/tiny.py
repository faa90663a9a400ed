"""A tiny CNN, its PredNet and random images, shared by the bad-input and training tests."""
import torch
from torch import nn
from torch.utils.data import TensorDataset


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 16, 3))


def small_prednet():
    """``small_cnn`` predified at its two ReLUs, input (1, 16, 16), decoders initialised from seed 0."""
    import pcnet
    torch.manual_seed(0)
    return pcnet.predify(small_cnn(), layers=["1", "4"], input_shape=(1, 16, 16))


def random_images(n, seed=0):
    """(n, 1, 16, 16) uniform images with labels in {0, 1, 2}."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g))


def state_copy(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)



def interrupted(monkeypatch, run, *, target, name: str, after: int):
    """Call ``run()`` with ``target.name`` raising KeyboardInterrupt on its call after ``after`` calls (a killed
    run); checks that it was interrupted. E.g. ``target=pcnet, name="feedback_step"``: after ``after`` steps."""
    import pytest

    original, calls = getattr(target, name), {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        return original(*args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(target, name, wrapped)
        with pytest.raises(KeyboardInterrupt):
            run()
