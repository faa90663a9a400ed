"""The extension point for the dynamics (issue 21): ``predify(..., update=fn, error_scale=fn)``, per network,
honoured by the reference and the fast path."""
import copy
import math

import pytest
import torch

import pcnet
from pcnet import dynamics
from tiny import small_cnn


def _pair(**options):
    """Two PredNets on ONE backbone with equal decoders: the default rule and one built with ``options``."""
    torch.manual_seed(0)
    model = small_cnn()
    default = pcnet.predify(model, layers=["1", "4"], input_shape=(1, 16, 16), alpha=0.05)
    custom = pcnet.predify(model, layers=["1", "4"], input_shape=(1, 16, 16), alpha=0.05,
                           decoders=copy.deepcopy(list(default.decoders)), **options)
    return default, custom


def _x():
    return torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def _run(net, *, reference):
    with torch.no_grad():
        trace = net.run(_x(), timesteps=4, record=("errors", "states"), reference=reference)
    return trace.logits, trace.errors, trace.states


def rectified(state, *, feedforward, prediction, error_grad, beta, lam, alpha):
    """max(0, eq-update): the course project's first change to the rule."""
    return dynamics.update_state(state, feedforward=feedforward, prediction=prediction, error_grad=error_grad,
                                 beta=beta, lam=lam, alpha=alpha).clamp_min(0)


def by_hand(state, *, feedforward, prediction, error_grad, beta, lam, alpha):
    """Eq. eq-update written out again, as a student would."""
    new = beta * feedforward + (1 - beta - lam) * state - alpha * error_grad
    return new if prediction is None else new + lam * prediction


@pytest.mark.parametrize("reference", [True, False], ids=["reference", "fast"])
def test_a_custom_rule_equal_to_the_default_gives_the_same_outputs(reference):
    default, same = _pair(update=dynamics.update_state)
    _, by_hand_net = _pair(update=by_hand)
    expected = _run(default, reference=reference)
    for net in (same, by_hand_net):
        got = _run(net, reference=reference)
        assert torch.allclose(got[0], expected[0], atol=1e-6, rtol=1e-5)
        assert torch.allclose(got[1], expected[1], atol=1e-7, rtol=1e-5)
    if reference:  # the reference path calls the very same function: bit for bit
        assert all(torch.equal(a, b) for a, b in zip(_run(same, reference=True)[2], expected[2]))


def test_a_custom_rule_changes_only_its_network():
    default, relu_net = _pair(update=rectified)
    before = _run(default, reference=False)
    logits, _, states = _run(relu_net, reference=False)
    after = _run(default, reference=False)
    assert torch.equal(before[0], after[0])  # the other network on the same backbone is unaffected
    assert not torch.allclose(logits[1:], before[0][1:])  # the rule changed this one's dynamics
    assert torch.equal(logits[0], before[0][0])  # t = 0 is the plain backbone either way
    assert all((s[1:] >= 0).all() for s in states)  # every updated state is max(0, .)
    assert any((s[1:] < 0).any() for s in before[2])  # while the default rule's states go negative
    assert "update=rectified" in repr(relu_net)


def test_both_paths_agree_on_a_custom_rule_and_gradients_flow():
    _, net = _pair(update=rectified)
    ref, fast = _run(net, reference=True), _run(net, reference=False)
    assert torch.allclose(ref[0], fast[0], atol=1e-6, rtol=1e-5) and torch.allclose(ref[1], fast[1], atol=1e-7)
    x = _x().requires_grad_()
    logits = net(x, timesteps=3)  # grad mode: the reference path, differentiable through the custom rule
    assert torch.allclose(logits.detach(), ref[0][:4], atol=1e-6, rtol=1e-5)
    logits[-1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("reference", [True, False], ids=["reference", "fast"])
def test_error_scale_as_a_function(reference):
    default, same = _pair(error_scale=lambda *, projective_field, batch, numel: 1 / math.sqrt(projective_field))
    expected = _run(default, reference=reference)
    assert torch.allclose(_run(same, reference=reference)[0], expected[0], atol=1e-6, rtol=1e-5)
    _, off = _pair(error_scale=lambda **sizes: 0.0)  # a zero scale removes the error term: alpha = 0 by hand
    no_alpha = copy.deepcopy(default)
    no_alpha.set_hparams(alpha=0.0)
    assert torch.allclose(_run(off, reference=reference)[0], _run(no_alpha, reference=reference)[0], atol=1e-6)
    seen = []
    _, spy = _pair(error_scale=lambda **sizes: seen.append(sizes) or 1.0)
    _run(spy, reference=reference)
    assert {s["batch"] for s in seen[1:]} == {6} and {s["numel"] for s in seen[1:]} == {256, 4 * 16 * 16}


def test_bad_rules_and_scales_name_the_fix():
    with pytest.raises(TypeError, match=r"update must be a function fn\(state, \*, feedforward"):
        _pair(update="relu")
    with pytest.raises(ValueError, match=r"error_scale function .* returned nan; it must return a finite number"):
        _pair(error_scale=lambda **sizes: float("nan"))
    with pytest.raises(ValueError, match=r"error_scale must be one of \('projective', 'mean'\) or a function"):
        _pair(error_scale="sqrt")
    _, net = _pair(update=lambda state, **inputs: state[:1])
    with pytest.raises(ValueError, match=r"update rule '<lambda>' returned \(1, 4, 16, 16\) for PCoder 0 \('1'\); "
                                         r"it must return the new state, a tensor of the state's shape \(6, 4, 16, 16\)"):
        net(_x(), timesteps=1)
