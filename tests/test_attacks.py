"""pcnet.experiments.attacks: the attacked function is the evaluated one; BPDA backward passes; attacks that work."""
import copy

import pytest
import torch
from torch import nn

import pcnet
from pcnet.experiments import attacks as A


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=96, seed=0):
    """3 classes of 8x8 images: a bright 3x3 blob at one of three places, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    for i, k in enumerate(y.tolist()):
        x[i, 0, 1 + 2 * k:4 + 2 * k, 1 + 2 * k:4 + 2 * k] += 0.6
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 3))
    x, y = _data(300, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    net = pcnet.predify(model, layers=["1", "4"], input_shape=(1, 8, 8), beta=0.6, lam=0.3, alpha=0.3)
    for _ in range(30):  # some feedback training so that predictions are not random
        pcnet.feedback_step(net, x, torch.optim.Adam(net.decoders.parameters(), lr=0.01))
    return net.eval()


def _grad(f, x):
    """Gradient of a fixed linear functional of the logits (so BPDA gradients compare without chain-rule
    factors that depend on the forward value)."""
    x = x.clone().requires_grad_(True)
    out = f(x)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad((out * w).sum(), x)
    return g


@pytest.mark.parametrize("gradient", A.GRADIENTS)
def test_wrapper_value_equals_net_at_timestep(trained, gradient):
    x, _ = _data(8)
    before = copy.deepcopy(trained.state_dict())
    f = A.TimestepLogits(trained, timestep=3, gradient=gradient, k=2)
    with torch.no_grad():
        ref = trained(x, timesteps=3)
    assert torch.allclose(f(x), ref[3], atol=1e-5)  # grad enabled: the BPDA value is the dynamics
    with torch.no_grad():
        assert torch.allclose(f(x), ref[3], atol=1e-5)
    g = _grad(f, x)
    assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(torch.equal(v, before[k]) for k, v in trained.state_dict().items())  # caller's net untouched
    assert all(p.requires_grad for p in trained.decoders.parameters())
    assert pcnet.dynamics.update_state.__name__ == "update_state" and \
        pcnet.dynamics.error_gradient.__module__ == "pcnet.dynamics"  # patches restored


def test_bpda_gradients(trained):
    x, _ = _data(8)
    full = _grad(A.TimestepLogits(trained, timestep=3), x)
    ff = _grad(A.TimestepLogits(trained, timestep=3, gradient="feedforward"), x)
    backbone = _grad(lambda z: trained.backbone(z), x)
    assert torch.allclose(ff, backbone, atol=1e-6)  # BPDA-feedforward backpropagates through t = 0 only
    assert not torch.allclose(full, ff, atol=1e-4)
    last = _grad(A.TimestepLogits(trained, timestep=3, gradient="last-k", k=1), x)
    assert not torch.allclose(last, full, atol=1e-4)  # truncation drops the earlier steps' paths
    assert torch.allclose(_grad(A.TimestepLogits(trained, timestep=3, gradient="last-k", k=3), x), full, atol=1e-5)
    detached = _grad(A.TimestepLogits(trained, timestep=3, gradient="detached-error"), x)
    assert not torch.allclose(detached, full, atol=1e-5)  # the error term's own input dependence is dropped


def test_bpda_limits_agree_with_full_gradient(trained):
    """Where the dropped paths carry no gradient the BPDA variants must equal the white-box gradient."""
    x, _ = _data(8)
    net = copy.deepcopy(trained)
    net.set_hparams(beta=1.0, lam=0.0, alpha=0.0)  # states do not depend on earlier states
    full = _grad(A.TimestepLogits(net, timestep=3), x)
    assert torch.allclose(_grad(A.TimestepLogits(net, timestep=3, gradient="last-k", k=1), x), full, atol=1e-6)
    net.set_hparams(beta=0.6, lam=0.3, alpha=0.0)  # no error term: detaching it changes nothing
    full = _grad(A.TimestepLogits(net, timestep=3), x)
    assert torch.allclose(_grad(A.TimestepLogits(net, timestep=3, gradient="detached-error"), x), full, atol=1e-6)


def test_wrapper_bad_options(trained):
    with pytest.raises(ValueError, match="gradient must be"):
        A.TimestepLogits(trained, timestep=2, gradient="magic")
    with pytest.raises(ValueError, match="k <= timestep"):
        A.TimestepLogits(trained, timestep=2, gradient="last-k", k=3)


def test_white_box_pgd_reduces_accuracy(trained):
    x, y = _data(30, seed=2)
    f = A.TimestepLogits(trained, timestep=2)
    with torch.no_grad():
        clean = float((f(x).argmax(-1) == y).float().mean())
    adv, curve = A.pgd(f, x, y, eps=0.3, steps=10)
    A.check_perturbation(x, adv, eps=0.3, norm="Linf")
    assert clean > 0.9 and float(curve[0]) == pytest.approx(clean)
    assert float(curve[-1]) < clean - 0.3 and (curve[1:] <= curve[:-1]).all()
    with torch.no_grad():
        assert float((f(adv).argmax(-1) == y).float().mean()) == pytest.approx(float(curve[-1]))
    adv2, _ = A.pgd(f, x, y, eps=0.3, steps=10)
    assert torch.equal(adv, adv2)  # deterministic attack on a deterministic model
    adv_l2, curve_l2 = A.pgd(f, x, y, eps=1.5, norm="L2", steps=10)
    A.check_perturbation(x, adv_l2, eps=1.5, norm="L2")
    assert float(curve_l2[-1]) < clean
    with pytest.raises(AssertionError, match="exceeds"):
        A.check_perturbation(x, (x + 0.5).clamp(0, 1), eps=0.3, norm="Linf")


def test_torchattacks_on_wrapper(trained):
    x, y = _data(30, seed=3)
    f = A.TimestepLogits(trained, timestep=2)
    with torch.no_grad():
        clean = (f(x).argmax(-1) == y)
    results = {}
    for name in ("apgd-ce", "apgd-dlr", "square", "bim-targeted"):
        attack = A.make_attack(name, f, eps=0.3, steps=10, n_queries=100)
        correct, adv = A.attack_correct(f, attack, x, y, batch_size=16)
        A.check_perturbation(x, adv, eps=0.3, norm="Linf")
        results[name] = correct
        assert float(correct.float().mean()) < float(clean.float().mean())
    robust, strongest = A.worst_case(results)
    assert (robust <= torch.stack(list(results.values())).all(0)).all() and strongest[0] in results
    with pytest.raises(ValueError, match="unknown attack"):
        A.make_attack("fgsm", f, eps=0.1)


def test_worst_case_by_hand():
    correct = {"a": torch.tensor([True, True, False, True]), "b": torch.tensor([True, False, True, True])}
    robust, strongest = A.worst_case(correct)
    assert robust.tolist() == [True, False, False, True] and strongest == ["a", "b"]


def test_determinism_assertion(trained):
    x, _ = _data(4)
    A.assert_deterministic(A.TimestepLogits(trained, timestep=2), x)
    noisy = nn.Sequential(nn.Flatten(), nn.Dropout(0.5)).train()
    with pytest.raises(AssertionError, match="EOT"):
        A.assert_deterministic(noisy, x)
