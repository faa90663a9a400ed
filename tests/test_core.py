"""PredNet: equivalence with the backbone, batch independence, gradients, persistence, grad modes."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pcnet
from pcnet import decoders as dec
from pcnet import dynamics
from pcnet.experiments import models as presets


def small_cnn():
    """A custom model with BatchNorm, a non-ReLU layer (BN output) and a head."""
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Tanh(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def trained_bn(model, shape):
    """Give BatchNorm layers non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def custom():
    torch.manual_seed(0)
    model = trained_bn(small_cnn(), (1, 16, 16))
    return pcnet.predify(model, layers=["2", "6"], input_shape=(1, 16, 16))


PRESETS = [
    ("vgg16", lambda: presets.pvgg16(image_size=64)),
    ("efficientnet_b0", lambda: presets.pefficientnet_b0(image_size=64)),
    ("resnet18", lambda: presets.presnet18(image_size=64)),
    ("shallow", lambda: presets.pshallow_cifar()),
]


@pytest.mark.parametrize("name,build", PRESETS, ids=[p[0] for p in PRESETS])
def test_t0_equals_backbone_and_ff_only_dynamics_equal_backbone(name, build):
    torch.manual_seed(0)
    net = build()
    x = torch.rand(2, *net.input_shape)
    with torch.no_grad():
        expected = net.backbone(x)
        logits = net(x, timesteps=2)
        net.set_hparams(beta=1.0, lam=0.0, alpha=0.0)
        ff_only = net(x, timesteps=3)
    assert logits.shape == (3, *expected.shape)
    assert torch.equal(logits[0], expected)
    for t in range(4):
        assert torch.equal(ff_only[t], expected)


def test_custom_model_t0_and_dynamics_move(custom):
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        logits = custom(x, timesteps=3)
        assert torch.equal(logits[0], custom.backbone(x))
    assert not torch.allclose(logits[3], logits[0])


def test_relu_only_where_the_target_is_nonnegative(custom):
    assert not any(isinstance(m, nn.ReLU) for m in custom.decoders[0])  # predicts the image
    assert isinstance(custom.decoders[1][-1], nn.ReLU)  # predicts a ReLU output
    net = pcnet.predify(small_cnn().eval(), layers=["5", "6"], input_shape=(1, 16, 16))
    assert not any(isinstance(m, nn.ReLU) for m in net.decoders[1])  # target is a BatchNorm output


def test_projective_field_sizes_match_the_kernels():
    vgg = presets.pvgg16(image_size=112)  # large enough that no field is clipped by the border
    # transposed conv k x k, stride 1 or 2 (k even, so each input pixel reaches k*k outputs), all out channels
    assert vgg.projective_fields.tolist() == [25 * 3, 100 * 64, 196 * 128, 196 * 256, 196 * 512]
    # nearest x2 upsampling then 3x3: a 2x2 block spreads to 4x4
    assert presets.pshallow_cifar().projective_fields.tolist() == [9 * 3, 16 * 12, 16 * 18]


@pytest.mark.parametrize("error_scale", ["projective", "mean"])
def test_batch_independence(custom, error_scale):
    torch.manual_seed(1)
    net = copy.deepcopy(custom)
    net.error_scale = error_scale
    net.set_hparams(alpha=0.5)  # a visible error term
    x = torch.rand(8, 1, 16, 16)
    with torch.no_grad():
        alone = net(x[3:4], timesteps=4)[:, 0]
        inside = net(x, timesteps=4)[:, 3]
    if error_scale == "projective":
        torch.testing.assert_close(alone, inside, rtol=1e-5, atol=1e-5)
    else:  # the original package's batch mean makes a sample's dynamics depend on its batch size
        assert (alone - inside).abs().max() > 1e-4


DECODERS = [
    ("auto_up", lambda: dec.auto_decoder(source=(6, 4, 4), target=(3, 8, 8), relu=True), (6, 4, 4)),
    ("scale2_folded", lambda: nn.Sequential(nn.Upsample(scale_factor=2), nn.ConvTranspose2d(6, 3, 3, padding=1),
                                            nn.ReLU()), (6, 4, 4)),
    ("auto_odd", lambda: dec.auto_decoder(source=(6, 5, 5), target=(3, 11, 11), relu=False), (6, 5, 5)),
    ("vgg_k10", lambda: nn.Sequential(nn.ConvTranspose2d(6, 4, 10, stride=2, padding=4), nn.ReLU()), (6, 8, 8)),
    ("conv_bilinear", lambda: nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(6, 3, 3, padding=1),
                                            nn.ReLU(), nn.ConvTranspose2d(3, 3, 3, stride=2, padding=1, output_padding=1)),
     (6, 4, 4)),
]


@pytest.mark.parametrize("name,build,source", DECODERS, ids=[d[0] for d in DECODERS])
def test_adjoint_error_gradient_equals_autograd(name, build, source):
    torch.manual_seed(2)
    decoder = build().double()
    assert dec.supports_adjoint(decoder)
    state = torch.rand(3, *source, dtype=torch.float64)
    with torch.no_grad():
        target = torch.rand_like(decoder(state))
        p1, g1 = dynamics.error_gradient_adjoint(decoder, state, target, scale=0.3)
    p2, g2 = dynamics.error_gradient(decoder, state, target, scale=0.3, create_graph=False)
    torch.testing.assert_close(p1, p2.detach())
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_folded_kernel_equals_upsample_then_conv():
    torch.manual_seed(7)
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    z = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    expected = F.conv_transpose2d(F.interpolate(z, scale_factor=2), weight, padding=1)
    torch.testing.assert_close(F.conv_transpose2d(z, dec.folded_weight(weight), stride=2, padding=1), expected)


def test_mean_mode_reproduces_gradient_of_batch_mean_mse():
    torch.manual_seed(3)
    decoder = dec.auto_decoder(source=(6, 4, 4), target=(3, 8, 8), relu=False).double()
    state = torch.rand(5, 6, 4, 4, dtype=torch.float64, requires_grad=True)
    target = torch.rand(5, 3, 8, 8, dtype=torch.float64)
    (expected,) = torch.autograd.grad(F.mse_loss(decoder(state), target), state)  # the original's mean
    scale = dynamics.error_scale(mode="mean", projective_field=1, batch=5, numel=3 * 8 * 8)
    with torch.no_grad():
        _, grad = dynamics.error_gradient_adjoint(decoder, state.detach(), target, scale=scale)
    torch.testing.assert_close(grad, expected)


def test_fast_and_differentiable_modes_agree(custom):
    torch.manual_seed(4)
    net = copy.deepcopy(custom)
    net.set_hparams(alpha=0.3)
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        fast = net.run(x, timesteps=4, record=("states",))
    slow = net.run(x, timesteps=4, record=("states",))
    assert fast.logits.grad_fn is None and all(s.grad_fn is None for s in fast.states)
    torch.testing.assert_close(fast.logits, slow.logits.detach(), rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(net(x, timesteps=4), fast.logits)


def tiny_smooth_net(**kw):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Tanh(),
                          nn.Flatten(), nn.Linear(3 * 2 * 2, 2)).double()
    decoders = [nn.Sequential(nn.ConvTranspose2d(2, 1, 3, padding=1)),
                nn.Sequential(nn.Upsample(size=(4, 4)), nn.ConvTranspose2d(3, 2, 3, padding=1))]
    return pcnet.predify(model, layers=["1", "3"], input_shape=(1, 4, 4), decoders=[d.double() for d in decoders], **kw)


def test_gradcheck_through_unrolled_dynamics_wrt_input():
    net = tiny_smooth_net(alpha=0.2)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: net(inp, timesteps=3)[-1], (x,))


def test_gradient_through_error_term_matters():
    """The input gradient differs when the error term is detached (as the original package does)."""
    net = tiny_smooth_net(alpha=0.5)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    (full,) = torch.autograd.grad(net(x, timesteps=3)[-1].sum(), x)
    (ff_only,) = torch.autograd.grad(net.unwrap()(x).sum(), x)
    assert not torch.allclose(full, ff_only)


def test_gradcheck_wrt_learnable_hyperparameters():
    net = tiny_smooth_net(alpha=0.2, learnable=True)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    logits, log_alpha = [p.detach().clone().double().requires_grad_() for p in net.hparam_parameters()]

    def f(lg, la):
        return torch.func.functional_call(net, {"hyper.logits": lg, "hyper.log_alpha": la}, (x,), {"timesteps": 3})[-1]

    assert torch.autograd.gradcheck(f, (logits, log_alpha))


def test_learnable_hyperparameters_stay_valid_after_adam_with_zero_lam():
    net = tiny_smooth_net(beta=0.9, lam=0.0, alpha=0.0, learnable=True)
    opt = torch.optim.Adam(net.hparam_parameters(), lr=0.5)
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(net(x, timesteps=3).flatten(0, 1), torch.zeros(16, dtype=torch.long)).backward()
        opt.step()
        hp = net.hparams()
        assert all(torch.isfinite(v).all() for v in hp.values())
        assert (hp["beta"] >= 0).all() and (hp["lam"] >= 0).all() and (hp["alpha"] > 0).all()
        assert (hp["beta"] + hp["lam"] <= 1 + 1e-6).all() and hp["lam"][-1] == 0
    with torch.no_grad():  # any parameter values give valid hyperparameters
        for p in net.hparam_parameters():
            p.copy_(torch.randn_like(p) * 50)
    hp = net.hparams()
    assert torch.isfinite(hp["beta"]).all() and (hp["beta"] + hp["lam"] <= 1 + 1e-6).all() and hp["lam"][-1] == 0


def test_save_load_deepcopy_state_dict(custom, tmp_path):
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        expected = custom(x, timesteps=3)
        clone = copy.deepcopy(custom)
        torch.testing.assert_close(clone(x, timesteps=3), expected, rtol=0, atol=0)
        torch.save(custom, tmp_path / "net.pt")
        loaded = torch.load(tmp_path / "net.pt", weights_only=False)
        torch.testing.assert_close(loaded(x, timesteps=3), expected, rtol=0, atol=0)
        fresh = pcnet.predify(small_cnn(), layers=["2", "6"], input_shape=(1, 16, 16))
        fresh.load_state_dict(custom.state_dict())
        torch.testing.assert_close(fresh(x, timesteps=3), expected, rtol=0, atol=0)


def test_no_hooks_leak_and_unwrap_returns_the_model():
    torch.manual_seed(0)
    model = trained_bn(small_cnn(), (1, 16, 16))
    before = copy.deepcopy(model.state_dict())
    net = pcnet.predify(model, layers=["2", "6"], input_shape=(1, 16, 16))
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        net(x, timesteps=2)
        pcnet.rescaled_forward(net, x, scale=0.9)
    net(x, timesteps=1)
    assert net.unwrap() is model
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_train_mode_keeps_backbone_in_eval(custom):
    net = copy.deepcopy(custom)
    net.train()
    assert net.decoders.training and not net.backbone.training
    assert not any(m.training for m in net.backbone.modules())


def test_feedback_step_trains_only_decoders_and_keeps_bn_statistics():
    torch.manual_seed(6)
    net = pcnet.predify(trained_bn(small_cnn(), (1, 16, 16)), layers=["2", "6"], input_shape=(1, 16, 16))
    backbone_before = copy.deepcopy(net.backbone.state_dict())
    decoders_before = copy.deepcopy(net.decoders.state_dict())
    opt = torch.optim.Adam(net.decoders.parameters(), lr=1e-2)
    x = torch.rand(16, 1, 16, 16)
    first = pcnet.feedback_step(net, x, opt)
    for _ in range(20):
        last = pcnet.feedback_step(net, x, opt)
    assert first.shape == (2,) and (last < first).all()
    for k, v in net.backbone.state_dict().items():  # weights and BN running stats bit-identical
        assert torch.equal(v, backbone_before[k]), k
    assert all(p.grad is None for p in net.backbone.parameters())
    assert any(not torch.equal(v, decoders_before[k]) for k, v in net.decoders.state_dict().items())


def test_feedback_loss_matches_definition(custom):
    x = torch.rand(4, 1, 16, 16)
    total, per_layer = pcnet.feedback_loss(custom, x)
    with torch.no_grad():
        e1 = custom.backbone[:3](x)
        e2 = custom.backbone[:7](x)
        expected = torch.stack([F.mse_loss(custom.decoders[0](e1), x), F.mse_loss(custom.decoders[1](e2), e1)])
    torch.testing.assert_close(per_layer, expected)
    torch.testing.assert_close(total.detach(), expected.sum())


def test_records_have_documented_shapes(custom):
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        tr = custom.run(x, timesteps=4, record=("errors", "states", "predictions", "terms"))
    assert tr.logits.shape == (5, 3, 5)
    assert tr.errors.shape == (5, 2, 3)
    assert [s.shape for s in tr.states] == [(5, 3, 6, 16, 16), (5, 3, 8, 8, 8)]
    assert [p.shape for p in tr.predictions] == [(5, 3, 1, 16, 16), (5, 3, 6, 16, 16)]
    assert set(tr.terms) == {"feedforward", "feedback", "memory", "error"}
    assert tr.terms["feedback"][:, -1].eq(0).all()  # the top PCoder gets no feedback
    torch.testing.assert_close(tr.states[1][0], custom.backbone[:7](x))


def test_error_falls_for_error_only_dynamics():
    net = tiny_smooth_net(beta=0.0, lam=0.0, alpha=0.05)
    with torch.no_grad():
        err = net.run(torch.rand(2, 1, 4, 4, dtype=torch.float64), timesteps=10, record=("errors",)).errors
    assert (err[-1].sum(0) < err[0].sum(0)).all()
