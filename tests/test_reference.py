"""The reference implementation (PredNet.feedforward / predict / step), the update rule written once, the run
options that decide what backpropagation sees, and the API edges (at_timestep, repr)."""
import pytest
import torch
import torch.nn.functional as F

from pcnet import dynamics
from pcnet.experiments import models


@pytest.fixture
def net():
    torch.manual_seed(0)
    return models.pshallow_cifar(beta=0.7, lam=0.2, alpha=0.05).eval()


@pytest.fixture
def x():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_update_state_is_the_sum_of_update_terms_in_both_forms():
    g = torch.Generator().manual_seed(0)
    state, ff, pred, grad = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(4))
    hp = dict(beta=0.6, lam=0.3, alpha=0.05)
    terms = dynamics.update_terms(state, feedforward=ff, prediction=pred, error_grad=grad, **hp)
    assert [c for c, _ in terms.values()] == [0.6, 1 - 0.6 - 0.3, 0.3, -0.05]
    by_hand = 0.6 * ff + (1 - 0.6 - 0.3) * state + 0.3 * pred - 0.05 * grad
    readable = dynamics.update_state(state, feedforward=ff, prediction=pred, error_grad=grad, **hp)
    with torch.no_grad():
        buffered = dynamics.update_state(state, feedforward=ff, prediction=pred, error_grad=grad,
                                         out=torch.empty_like(state), **hp)
    assert torch.equal(readable, by_hand)
    torch.testing.assert_close(buffered, readable, rtol=1e-6, atol=1e-7)  # fused multiply-adds round differently
    top = dynamics.update_state(state, feedforward=ff, prediction=None, error_grad=None, beta=0.6, lam=0.0, alpha=0.0)
    assert torch.equal(top, 0.6 * ff + 0.4 * state)


@pytest.mark.parametrize("record", [(), ("states", "errors", "terms", "predictions")])
def test_fast_path_equals_reference_without_gradients(net, x, record):
    with torch.no_grad():
        fast = net.run(x, timesteps=4, record=record)
        ref = net.run(x, timesteps=4, record=record, reference=True)
    torch.testing.assert_close(fast.logits, ref.logits, rtol=1e-5, atol=1e-6)
    if record:
        for a, b in zip(fast.states + fast.predictions, ref.states + ref.predictions):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast.errors, ref.errors, rtol=1e-5, atol=1e-8)
        for k in fast.terms:
            torch.testing.assert_close(fast.terms[k], ref.terms[k], rtol=1e-5, atol=1e-7)


def test_one_reference_step_by_hand(net, x):
    """PredNet.step from t = 0 equals eq-update written out with the backbone's segments."""
    with torch.no_grad():
        states, _ = net.feedforward(x)
        coef = net.coefficients()
        predictions, grads = net.predict(x, states, coef)
        new, _ = net.step(x, states, net.feedback_of(predictions, "prediction"), grads, coef)
        b = net.backbone
        hp = net.hparams()
        expected, below = [], x
        for n, (lo, hi) in enumerate([(0, 2), (2, 5), (5, 8)]):  # conv-ReLU, pool-conv-ReLU, pool-conv-ReLU
            ff = b[lo:hi](below)
            fb = net.decoders[n + 1](states[n + 1]) if n < 2 else 0
            e = hp["beta"][n].item() * ff + hp["lam"][n].item() * fb + (1 - hp["beta"][n] - hp["lam"][n]).item() * states[n]
            expected.append(e - hp["alpha"][n].item() * grads[n])
            below = expected[-1]
    for a, e in zip(new, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def _input_grad(net, x, **options):
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(net.at_timestep(3, **options)(xg).sum(), xg)
    return g


def test_truncate_backpropagates_through_the_last_steps_only(net, x):
    with torch.no_grad():
        states = [s[2] for s in net.run(x, timesteps=2, record=("states",)).states]  # e_n(2), constants
    xg = x.clone().requires_grad_()
    coef = net.coefficients()
    predictions, grads = net.predict(xg, states, coef)
    _, logit = net.step(xg, states, net.feedback_of(predictions, "prediction"), grads, coef)
    (expected,) = torch.autograd.grad(logit.sum(), xg)  # gradient of the last step alone
    torch.testing.assert_close(_input_grad(net, x, truncate=2), expected, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(_input_grad(net, x), expected, rtol=1e-3, atol=1e-6)  # the full gradient differs


def test_detach_error_drops_only_the_error_terms_input_dependence(net, x):
    full, detached = _input_grad(net, x), _input_grad(net, x, detach_error=True)
    assert not torch.allclose(full, detached, rtol=1e-3, atol=1e-6)
    net.set_hparams(alpha=0.0)  # no error term: nothing to detach
    torch.testing.assert_close(_input_grad(net, x, detach_error=True), _input_grad(net, x), rtol=0, atol=0)


def test_at_timestep_is_a_module_with_batch_logits(net, x):
    readout = net.at_timestep(3, feedback="zero")
    assert isinstance(readout, torch.nn.Module) and readout.net is net
    with torch.no_grad():
        assert torch.equal(readout(x), net(x, timesteps=3, feedback="zero")[3])  # (B, K)
    loss = F.cross_entropy(readout(x), torch.tensor([0, 1, 2]))
    loss.backward()
    assert net.decoders[0][-1].weight.grad is not None
    assert "timestep=3" in repr(readout) and "feedback='zero'" in repr(readout)
    with pytest.raises(ValueError, match="timestep must be an integer >= 0"):
        net.at_timestep(-1)


def test_run_option_errors(net, x):
    with pytest.raises(ValueError, match=r"truncate must be an integer in \[0, timesteps - 1\]"):
        net.run(x, timesteps=3, truncate=3)
    with pytest.raises(TypeError, match="unexpected keyword"):
        net(x, timesteps=1, detach=True)


def test_repr_shows_layers_and_hyperparameters(net):
    text = repr(net)
    assert "layers=['1', '4', '7']" in text and "input_shape=(3, 32, 32)" in text
    assert "beta=[0.7, 0.7, 0.7]" in text and "lam=[0.2, 0.2, 0.0]" in text and "alpha=[0.05, 0.05, 0.05]" in text
    assert "error_scale='projective'" in text
