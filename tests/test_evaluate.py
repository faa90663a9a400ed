"""Tests for pcnet.experiments.evaluate: corruptions, accuracy per timestep, correlation distance."""
import functools

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import pcnet
from pcnet.experiments import evaluate as E


def tiny_prednet(seed=0):
    """A two-PCoder conv net on 1x8x8 images, predified with automatic decoders."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 3),
    )
    return pcnet.predify(model, layers=["1", "3"], input_shape=(1, 8, 8), beta=0.8, lam=0.1, alpha=0.01)


# ----------------------------------------------------------------------------- corruptions
def test_gaussian_noise_range_determinism_and_sigma():
    x = torch.full((64, 1, 16, 16), 0.5)
    a = E.gaussian_noise(x, sigma=0.05, generator=torch.Generator().manual_seed(1))
    b = E.gaussian_noise(x, sigma=0.05, generator=1)  # an int seed is the same stream
    c = E.gaussian_noise(x, sigma=0.05, generator=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # 0.5 is 10 sigma from either clip edge, so the noise is untouched by clipping here
    d = (a - x).flatten()
    assert abs(d.mean().item()) < 0.002 and abs(d.std().item() - 0.05) < 0.002
    assert torch.equal(E.gaussian_noise(x, sigma=0.0, generator=0), x)
    big = E.gaussian_noise(torch.rand(8, 3, 8, 8), sigma=3.0, generator=0)
    assert big.min() >= 0 and big.max() <= 1 and ((big == 0) | (big == 1)).float().mean() > 0.7


def test_salt_pepper_amount_balance_channels_determinism():
    x = torch.full((100, 3, 20, 20), 0.5)
    y = E.salt_pepper(x, amount=0.1, generator=3)
    assert torch.equal(y, E.salt_pepper(x, amount=0.1, generator=3))
    assert not torch.equal(y, E.salt_pepper(x, amount=0.1, generator=4))
    hit = y[:, 0] != 0.5  # (B, H, W)
    assert abs(hit.float().mean().item() - 0.1) < 0.005  # 40,000 pixels: sd of the fraction is 0.0015
    assert abs((y[:, 0][hit] == 1).float().mean().item() - 0.5) < 0.03
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 0], y[:, 2])  # a pixel is hit in all channels
    assert set(torch.unique(y).tolist()) == {0.0, 0.5, 1.0}
    assert torch.equal(E.salt_pepper(x, amount=0.0, generator=0), x)


def test_noise_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        E.gaussian_noise(torch.full((1, 1, 2, 2), 2.0), sigma=0.1)
    with pytest.raises(TypeError, match="float"):
        E.salt_pepper(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), amount=0.1)
    with pytest.raises(ValueError, match="amount"):
        E.salt_pepper(torch.zeros(1, 1, 2, 2), amount=1.5)
    with pytest.raises(ValueError, match="sigma"):
        E.gaussian_noise(torch.zeros(1, 1, 2, 2), sigma=-1)


# ----------------------------------------------------------------------------- accuracy per timestep
def test_dynamics_accuracy_matches_manual_loop():
    net = tiny_prednet()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(50, 1, 8, 8, generator=g), torch.randint(0, 3, (50,), generator=g)
    data = TensorDataset(x, y)
    corrupt = functools.partial(E.gaussian_noise, sigma=0.2)
    acc = E.evaluate_dynamics(net, data, timesteps=4, corrupt=corrupt, batch_size=16, seed=7, progress=False).accuracy
    # manual: same batches, same noise stream
    gen, hits = torch.Generator().manual_seed(7), torch.zeros(5)
    with torch.no_grad():
        for i in range(0, 50, 16):
            xb = E.gaussian_noise(x[i:i + 16], sigma=0.2, generator=gen)
            logits = net(xb, timesteps=4)  # (T+1, B, K)
            hits += (logits.argmax(-1) == y[i:i + 16]).float().sum(1)
    assert acc.shape == (5,)
    torch.testing.assert_close(acc, hits / 50)
    # a DataLoader is accepted as well, and the zero-feedback control runs through the same code
    acc_loader = E.evaluate_dynamics(net, DataLoader(data, batch_size=16), timesteps=4, corrupt=corrupt,
                                     seed=7, progress=False).accuracy
    torch.testing.assert_close(acc_loader, acc)
    zero = E.evaluate_dynamics(net, data, timesteps=4, feedback="zero", progress=False).accuracy
    with torch.no_grad():
        manual_zero = (net(x, timesteps=4, feedback="zero").argmax(-1) == y).float().mean(1)
    torch.testing.assert_close(zero, manual_zero)


def test_hparams_set_restores_and_validates():
    net = tiny_prednet()
    with E.hparams_set(net, lam=0.0, alpha=0.5):
        h = net.hparams()
        assert h["lam"].tolist() == [0.0, 0.0] and h["alpha"].tolist() == [0.5, 0.5]
    h = net.hparams()
    torch.testing.assert_close(h["lam"], torch.tensor([0.1, 0.0], dtype=h["lam"].dtype))
    torch.testing.assert_close(h["alpha"], torch.tensor([0.01, 0.01], dtype=h["alpha"].dtype))
    with pytest.raises(ValueError, match="beta \\+ lam"):
        with E.hparams_set(net, beta=0.95, lam=0.1):
            pass
    torch.testing.assert_close(net.hparams()["beta"], torch.tensor([0.8, 0.8], dtype=h["beta"].dtype))


def test_evaluate_dynamics_records_errors_and_terms():
    net = tiny_prednet()
    x, y = torch.rand(20, 1, 8, 8), torch.randint(0, 3, (20,))
    res = E.evaluate_dynamics(net, TensorDataset(x, y), timesteps=3, batch_size=7, record=("errors", "terms"),
                              progress=False)
    with torch.no_grad():
        trace = net.run(x, timesteps=3, record=("errors", "terms"))
    torch.testing.assert_close(res.errors, trace.errors.mean(-1), rtol=1e-5, atol=1e-7)
    assert set(res.terms) >= {"feedforward", "feedback", "memory", "error"}
    for k, v in res.terms.items():
        assert v.shape == (3, 2) and torch.isfinite(v).all()
    table = E.terms_table(res.terms, net.layers)
    assert len(table) == len(res.terms) * 3 * 2
    with pytest.raises(ValueError, match="record"):
        E.evaluate_dynamics(net, TensorDataset(x, y), timesteps=1, record=("states",), progress=False)


def test_correct_of_and_corrupt_dataset_share_the_noise_stream():
    x, y = torch.rand(30, 1, 4, 4), torch.randint(0, 2, (30,))
    data = TensorDataset(x, y)
    corrupt = functools.partial(E.salt_pepper, amount=0.3)
    noisy = E.corrupt_dataset(data, corrupt, seed=5, batch_size=8)
    gen = torch.Generator().manual_seed(5)
    manual = torch.cat([corrupt(x[i:i + 8], generator=gen) for i in range(0, 30, 8)])
    assert torch.equal(noisy.tensors[0], manual) and torch.equal(noisy.tensors[1], y)
    fn = lambda xb: torch.stack([xb.mean((1, 2, 3)), 0.5 - xb.mean((1, 2, 3))], dim=1)  # noqa: E731
    c = E.correct_of(fn, data, corrupt=corrupt, seed=5, batch_size=8, progress=False)
    assert torch.equal(c, fn(manual).argmax(1) == y)


# ----------------------------------------------------------------------------- correlation distance
def test_correlation_distance_hand_values():
    a = torch.tensor([[1.0, 2, 3, 4], [1, 2, 3, 4], [1, 0, -1, 0], [1, 2, 3, 4]])
    b = torch.tensor([[2.0, 4, 6, 8], [4, 3, 2, 1], [0, 1, 0, -1], [1, 3, 2, 4]])
    # rows: scaled copy (r=1), reversed (r=-1), orthogonal centred (r=0),
    # and by hand: deviations (-1.5,-.5,.5,1.5)·(-1.5,.5,-.5,1.5) = 4, norms sqrt(5) each -> r = 0.8
    torch.testing.assert_close(E.correlation_distance(a, b), torch.tensor([0.0, 2.0, 1.0, 0.2]))
    # shape-agnostic: a (B, C, H, W) state is flattened per sample
    torch.testing.assert_close(E.correlation_distance(a.reshape(4, 1, 2, 2), b.reshape(4, 1, 2, 2)),
                               torch.tensor([0.0, 2.0, 1.0, 0.2]))
    assert torch.isnan(E.correlation_distance(torch.ones(1, 3), torch.rand(1, 3))).all()
    with pytest.raises(ValueError, match="shapes"):
        E.correlation_distance(torch.ones(2, 3), torch.ones(2, 4))


def test_state_distance_over_time_is_zero_for_identical_inputs():
    net = tiny_prednet()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        d = E.state_distance_over_time(net, x, x, timesteps=3, reference="clean-t")
        d0 = E.state_distance_over_time(net, x, E.gaussian_noise(x, sigma=0.3, generator=0), timesteps=3,
                                        reference="clean-t0", feedback="zero")
    assert d.shape == (4, 2) and d.abs().max() < 1e-5
    assert d0.shape == (4, 2) and (d0[0] > 0).all()
