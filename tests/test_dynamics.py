"""The update rule against values computed by hand, term by term, on a one-number-per-layer network."""
import pytest
import torch
from torch import nn

import pcnet
from pcnet import dynamics

X, W1, W2, D1, D2 = 1.0, 2.0, 3.0, 0.4, 0.5


def scalar_net(**hp):
    """x -> e1 = W1 x -> e2 = W2 e1 (1x1 convs on 1x1 images); decoders D1 e1 ~ x, D2 e2 ~ e1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.Conv2d(1, 1, 1, bias=False), nn.Flatten()).double()
    model[0].weight.data.fill_(W1)
    model[1].weight.data.fill_(W2)
    decoders = [nn.Sequential(nn.ConvTranspose2d(1, 1, 1, bias=False)).double() for _ in range(2)]
    decoders[0][0].weight.data.fill_(D1)
    decoders[1][0].weight.data.fill_(D2)
    return pcnet.predify(model, layers=["0", "1"], input_shape=(1, 1, 1), decoders=decoders, **hp)


def states_after_one_step(net):
    x = torch.full((1, 1, 1, 1), X, dtype=torch.float64)
    with torch.no_grad():
        trace = net.run(x, timesteps=1, record=("states",))
    return [s[1].item() for s in trace.states]


def test_projective_field_of_one_by_one_decoder_is_one():
    assert scalar_net().projective_fields.tolist() == [1.0, 1.0]


def test_feedforward_term_alone():
    # beta=1: e1 = W1 x = 2, e2 = W2 e1 = 6 at every step
    assert states_after_one_step(scalar_net(beta=1.0, lam=0.0, alpha=0.0)) == [2.0, 6.0]


def test_memory_term_alone():
    # beta=0, lam=0, alpha=0: e(1) = e(0); e1(0) = 2, e2(0) = 6
    assert states_after_one_step(scalar_net(beta=0.0, lam=0.0, alpha=0.0)) == [2.0, 6.0]


def test_feedback_term_alone():
    # lam=1 below the top: e1(1) = D2 e2(0) = 0.5 * 6 = 3; top: beta=0 => memory 1 keeps e2 = 6
    assert states_after_one_step(scalar_net(beta=0.0, lam=[1.0, 0.0], alpha=0.0)) == [3.0, 6.0]


def test_error_term_alone():
    # beta=lam=0, memory 1, alpha=0.1, C=1: g1 = -2 D1 (x - D1 e1) = -2*0.4*(1-0.8) = -0.16
    # g2 = -2 D2 (e1 - D2 e2) = -2*0.5*(2-3) = 1.0; e1 = 2 + 0.016, e2 = 6 - 0.1
    e1, e2 = states_after_one_step(scalar_net(beta=0.0, lam=0.0, alpha=0.1))
    assert e1 == pytest.approx(2.016, abs=1e-12)
    assert e2 == pytest.approx(5.9, abs=1e-12)


def test_all_four_terms_paper_values():
    # e1(1) = 0.8*2 + 0.1*(0.5*6) + 0.1*2 - 0.01*(-0.16) = 1.6 + 0.3 + 0.2 + 0.0016 = 2.1016
    # e2(1) = 0.8*3*2.1016 + 0.2*6 - 0.01*1.0 = 5.04384 + 1.2 - 0.01 = 6.23384 (uses the updated e1)
    e1, e2 = states_after_one_step(scalar_net(beta=0.8, lam=0.1, alpha=0.01))
    assert e1 == pytest.approx(2.1016, abs=1e-12)
    assert e2 == pytest.approx(6.23384, abs=1e-12)


def test_logits_are_the_head_of_the_top_state():
    net = scalar_net(beta=0.8, lam=0.1, alpha=0.01)
    with torch.no_grad():
        logits = net(torch.full((1, 1, 1, 1), X, dtype=torch.float64), timesteps=1)
    assert logits.shape == (2, 1, 1)
    assert logits[0].item() == 6.0 and logits[1].item() == pytest.approx(6.23384, abs=1e-12)


def test_reconstruction_error_recorded_per_sample_mean():
    net = scalar_net(beta=0.8, lam=0.1, alpha=0.01)
    with torch.no_grad():
        trace = net.run(torch.full((1, 1, 1, 1), X, dtype=torch.float64), timesteps=1, record=("errors",))
    # t=0: layer 1: (1 - 0.4*2)^2 = 0.04; layer 2: (2 - 0.5*6)^2 = 1
    assert trace.errors.shape == (2, 2, 1)
    assert trace.errors[0, :, 0].tolist() == pytest.approx([0.04, 1.0])


def test_update_state_function_directly():
    s, f, p, g = (torch.tensor([v]) for v in (1.0, 2.0, 3.0, 4.0))
    new = dynamics.update_state(s, feedforward=f, prediction=p, error_grad=g, beta=0.5, lam=0.25, alpha=0.1)
    assert new.item() == pytest.approx(0.5 * 2 + 0.25 * 3 + 0.25 * 1 - 0.1 * 4)


def test_error_scale_modes():
    assert dynamics.error_scale(mode="projective", projective_field=16, batch=8, numel=100) == 0.25
    assert dynamics.error_scale(mode="mean", projective_field=16, batch=8, numel=100) == 1 / 800
    with pytest.raises(ValueError, match="error_scale must be one of"):
        dynamics.error_scale(mode="sum", projective_field=1, batch=1, numel=1)


def test_fixed_point_scale_is_reached_by_zero_prediction_control():
    net = scalar_net(beta=0.5, lam=[0.25, 0.0], alpha=0.0)
    x = torch.full((1, 1, 1, 1), X, dtype=torch.float64)
    with torch.no_grad():
        trace = net.run(x, timesteps=80, feedback="zero", record=("states",))
    scale = dynamics.fixed_point_scale(beta=0.5, lam=0.25)
    assert scale == pytest.approx(2 / 3)
    assert trace.states[0][-1].item() == pytest.approx(scale * W1, rel=1e-9)
    # the fixed-rescale control reaches the same first-layer value in one pass
    assert pcnet.rescaled_forward(net, x, scale=[scale, 1.0]).item() == pytest.approx(scale * W1 * W2, rel=1e-12)


@pytest.mark.parametrize("feedback, expected", [("prediction", [3.0, 6.0]), ("shuffled", [6.0, 3.0]),
                                                ("mean", [4.5, 4.5]), ("zero", [0.0, 0.0])])
def test_feedback_content_controls_by_hand(feedback, expected):
    """Two images x = 1, 2: e2(0) = W2 W1 x = 6, 12 and D2 e2(0) = 3, 6. With beta = 0, lam_1 = 1, alpha = 0
    the first state after one step is the feedback term alone: own, the other image's, the mean, or 0."""
    net = scalar_net(beta=0.0, lam=[1.0, 0.0], alpha=0.0)
    x = torch.tensor([X, 2 * X], dtype=torch.float64).view(2, 1, 1, 1)
    for reference in (False, True):
        with torch.no_grad():
            trace = net.run(x, timesteps=1, feedback=feedback, record=("states",), reference=reference)
        assert trace.states[0][1].flatten().tolist() == expected


def test_batch_controls_need_two_images():
    net = scalar_net()
    with pytest.raises(ValueError, match="at least 2 images"):
        net(torch.ones(1, 1, 1, 1, dtype=torch.float64), timesteps=1, feedback="shuffled")
