"""pcnet.experiments.tta: BN adaptation and TENT leave the caller's model alone and adapt to shifted data."""
import copy

import pytest
import torch
from torch import nn

from pcnet.experiments import tta


def _bn_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3))
    net.train()
    with torch.no_grad():  # source statistics from "clean" data
        for _ in range(20):
            net(torch.rand(32, 1, 8, 8))
    return net.eval()


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_bn_adapt_uses_batch_statistics_and_leaves_model_alone():
    net = _bn_net()
    before = copy.deepcopy(net)
    shifted = torch.rand(16, 1, 8, 8) * 3 + 2  # a strong shift in the input statistics
    adapt = tta.BNAdapt(net)
    out = adapt(shifted)
    assert _same(net, before) and not net.training
    ref = copy.deepcopy(net).train()  # train-mode BN normalises with the batch statistics
    with torch.no_grad():
        expected = ref(shifted)
    assert torch.allclose(out, expected, atol=1e-2)  # differs only by the unbiased-variance estimate
    with torch.no_grad():
        assert not torch.allclose(out, net(shifted), atol=1e-3)  # predictions change on shifted data
    full = tta.BNAdapt(net, source_weight=1.0)  # weight 1 keeps the source statistics: the source model
    with torch.no_grad():
        assert torch.allclose(full(shifted), net(shifted), atol=1e-6)
    with pytest.raises(ValueError, match="source_weight"):
        tta.BNAdapt(net, source_weight=2.0)
    with pytest.raises(ValueError, match="BatchNorm"):
        tta.BNAdapt(nn.Linear(2, 2))


def test_tent_lowers_entropy_only_moves_bn_affine_and_resets():
    net = _bn_net()
    before = copy.deepcopy(net)
    shifted = torch.rand(32, 1, 8, 8) * 3 + 2
    tent = tta.Tent(net, steps=5, lr=1e-2)
    bn_adapted = tta.BNAdapt(net)(shifted)
    tent(shifted)  # predicts, then adapts
    out = tent(shifted)  # predicted with the parameters adapted on the first call
    assert _same(net, before)
    assert tta.entropy(out) < tta.entropy(bn_adapted)  # entropy minimisation did something
    moved = [k for k, v in tent.model.state_dict().items() if not torch.equal(v, before.state_dict()[k])
             and not k.startswith("1.running") and "num_batches" not in k]
    assert moved and all(k in ("1.weight", "1.bias") for k in moved)
    tent.reset()
    assert all(torch.equal(tent.model.state_dict()[k], before.state_dict()[k]) for k in ("0.weight", "1.weight"))
    # episodic: two identical calls give identical outputs; online: the second call has adapted further
    episodic = tta.Tent(net, steps=1, lr=1e-2, episodic=True)
    assert torch.equal(episodic(shifted), episodic(shifted))
    online = tta.Tent(net, steps=1, lr=1e-2)
    assert not torch.equal(online(shifted), online(shifted))


def test_tent_predicts_then_updates_online():
    """Online TENT (Wang et al. 2021): a batch is predicted with the parameters adapted on the *previous*
    batches; the update computed on it only affects later batches."""
    net = _bn_net()
    first, second = torch.rand(16, 1, 8, 8) * 3 + 2, torch.rand(16, 1, 8, 8) * 3 + 2
    tent = tta.Tent(net, steps=1, lr=1e-1)
    train_mode = copy.deepcopy(net).train()  # the source parameters, normalising with batch statistics
    with torch.no_grad():
        expected_first = train_mode(first)
    assert torch.allclose(tent(first), expected_first, atol=1e-5)  # no update before predicting
    adapted = copy.deepcopy(tent.model)  # the parameters after the update on `first`
    with torch.no_grad():
        expected_second = adapted(second)
    assert torch.allclose(tent(second), expected_second, atol=1e-5)
    assert not torch.allclose(expected_second, train_mode(second).detach(), atol=1e-4)  # the update mattered


def test_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0]])  # ln 2 and ~0
    assert abs(float(tta.entropy(logits)) - 0.6931471805599453 / 2) < 1e-6
