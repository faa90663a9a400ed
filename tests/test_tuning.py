"""Tests for pcnet.experiments.tuning: the grid search finds a known optimum; gradient tuning stays valid and learns."""
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import pcnet
from pcnet.experiments import tuning as Tu


def mixing_net(*, learnable=False, beta=0.8, lam=0.1):
    """Two identity PCoders on 1x2x2 inputs whose top decoder always predicts the constant 1.

    With alpha = 0 the lower state relaxes to the fixed point e1* = (beta x + lam * 1) / (beta + lam), i.e. x
    mixed with 1 in the ratio r = lam / (beta + lam); the top state follows e1 and the head says
    "class 0" when it exceeds 0.5. So the label of an input with value x depends only on r.
    """
    conv1, conv2 = nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1)
    head = nn.Linear(1, 2)
    with torch.no_grad():
        for c in (conv1, conv2):
            c.weight.fill_(1.0), c.bias.zero_()
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        head.bias.copy_(torch.tensor([-0.5, 0.5]))
    model = nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    dec1, dec2 = nn.ConvTranspose2d(1, 1, 1), nn.ConvTranspose2d(1, 1, 1)
    with torch.no_grad():
        dec1.weight.fill_(1.0), dec1.bias.zero_()
        # predicts 1 whatever the state (a tiny weight, not 0, keeps its projective field C = 1)
        dec2.weight.fill_(1e-6), dec2.bias.fill_(1.0)
    return pcnet.predify(model, layers=["1", "3"], input_shape=(1, 2, 2),
                         decoders=[nn.Sequential(dec1), nn.Sequential(dec2)],
                         beta=beta, lam=lam, alpha=0.0, learnable=learnable)


def mixing_data(r_star, n=201):
    x = torch.linspace(0, 1, n)  # (n,)
    fixed_point = (1 - r_star) * x + r_star * 1.0
    y = (fixed_point <= 0.5).long()  # class 0 when the mixed value exceeds 0.5
    return TensorDataset(x.reshape(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(), y)


def test_grid_search_picks_the_known_best_point():
    net = mixing_net()
    beta_star, lam_star = 0.7, 0.2  # r* = 0.222; every other grid point has a different ratio
    data = mixing_data(lam_star / (beta_star + lam_star))
    before = {k: v.clone() for k, v in net.hparams().items()}
    res = Tu.grid_search(net, data, grid={"beta": [0.5, 0.7, 0.9], "lam": [0.0, 0.05, 0.1, 0.2, 0.4]},
                         timesteps=40, batch_size=64, progress=False)
    assert res.best == {"beta": pytest.approx(beta_star), "lam": pytest.approx(lam_star)}
    assert res.best_score == 1.0
    assert sorted(r["score"] for r in res.rows)[-2] < 1.0  # the optimum is unique
    assert {"beta": 0.7, "lam": 0.4} in res.skipped and {"beta": 0.9, "lam": 0.2} in res.skipped
    assert len(res.rows) + len(res.skipped) == 15 and len(res.table()) == len(res.rows)
    for k, v in net.hparams().items():  # the net is left as it was
        torch.testing.assert_close(v, before[k])


def test_grid_search_rejects_bad_grids():
    net = mixing_net()
    data = mixing_data(0.2, n=8)
    with pytest.raises(ValueError, match="grid keys"):
        Tu.grid_search(net, data, grid={"gamma": [1.0]}, timesteps=2, progress=False)
    with pytest.raises(ValueError, match="beta \\+ lam"):
        Tu.grid_search(net, data, grid={"beta": [0.9], "lam": [0.5]}, timesteps=2, progress=False)


def _check_valid(h):
    beta, lam, alpha = h["beta"], h["lam"], h["alpha"]
    for v in (beta, lam, alpha):
        assert torch.isfinite(v).all() and (v >= 0).all()
    assert (beta + lam <= 1 + 1e-6).all()
    assert lam[-1] == 0  # the top PCoder has no feedback


def test_tune_hparams_stays_valid_lowers_the_loss_and_touches_nothing_else():
    net = mixing_net(learnable=True, beta=0.8, lam=0.05)
    data = mixing_data(0.4, n=64)  # the labels need r = lam / (beta + lam) = 0.4: more feedback
    x, y = data.tensors
    hp_ids = {id(p) for p in net.hparam_parameters()}
    others = [(p, p.detach().clone(), p.requires_grad) for p in net.parameters() if id(p) not in hp_ids]
    with torch.no_grad():
        loss0 = Tu.dynamics_loss(net, x, y, timesteps=8).item()
    res = Tu.tune_hparams(net, data, timesteps=8, lr=0.1, steps=20, batch_size=64, progress=False)
    with torch.no_grad():
        loss1 = Tu.dynamics_loss(net, x, y, timesteps=8).item()
    assert len(res.losses) == 20 and len(res.history) == 20
    assert loss1 < 0.9 * loss0
    assert res.history[-1]["lam"][0] > 0.05  # it learned to lean on the feedback
    _check_valid({k: v.detach() for k, v in net.hparams().items()})
    for step in res.history:
        _check_valid({k: torch.tensor(v) for k, v in step.items()})
    for p, value, flag in others:  # backbone and decoders untouched, their requires_grad restored
        assert torch.equal(p, value) and p.requires_grad == flag


def test_tune_hparams_from_lam_zero_stays_finite():
    # the original package's parameterisation turns NaN after one Adam step when lam = 0
    net = mixing_net(learnable=True, beta=0.8, lam=0.0)
    res = Tu.tune_hparams(net, mixing_data(0.4, n=32), timesteps=4, lr=0.1, steps=5, batch_size=32,
                          progress=False)
    assert all(torch.isfinite(torch.tensor(v)).all() for v in res.losses)
    _check_valid({k: v.detach() for k, v in net.hparams().items()})


def test_tune_hparams_needs_learnable_net():
    net = mixing_net(learnable=False)
    with pytest.raises(ValueError, match="learnable=True"):
        Tu.tune_hparams(net, mixing_data(0.2, n=8), timesteps=2, steps=1, progress=False)
