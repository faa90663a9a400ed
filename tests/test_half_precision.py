"""float16 end to end on the CPU (the path a T4 takes on CUDA): autocast for the evaluations and attacks of chapter 7,
a gradient scaler for feedback training, and the automatic choice of precision.

Stated agreement with float32 (here, and in chapter 7): top-1 of at least 95 % of the images at every timestep,
on a network whose logits are of order 1; feedback losses within 1 % (float16 has 11 significant bits).
"""
import pytest
import torch
from torch.utils.data import TensorDataset

from pcnet.experiments import devices, models, scale_eval, train

AGREE = 0.95


def _net():
    torch.manual_seed(0)
    net = models.pshallow_cifar().eval()
    with torch.no_grad():
        net.backbone[-1].weight.mul_(30)  # logits of order 1, so that top-1 agreement means something
    return net


def _data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)  # (n, 3, 32, 32)
    with torch.no_grad():
        labels = _net()(x, timesteps=0)[0].argmax(-1)  # (n,): the backbone's own classes, so accuracy is not ~0
    return TensorDataset(x, labels)


def test_amp_precision_picks_fp16_without_bf16(monkeypatch):
    assert devices.amp_precision("cpu") is None
    assert devices.amp_precision("cpu", "fp16") == "fp16" and devices.amp_precision("cuda", "fp32") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a T4
    assert devices.amp_precision("cuda") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # an A100
    assert devices.amp_precision("cuda") == "bf16"
    with pytest.raises(ValueError, match=r'PRECISION must be "auto", "fp32", "bf16" or "fp16", got \'half\''):
        devices.amp_precision("cuda", "half")


def test_fp16_noise_study_agrees_with_float32_at_every_timestep():
    net, data = _net(), _data()
    runs = {p: scale_eval.noise_study(net, data, sigmas=[0.0, 0.1], timesteps=3, batch_size=32, progress=False,
                                      precision=p) for p in (None, "fp16")}
    for sigma in (0.0, 0.1):
        for method, c32 in runs[None]["correct"][sigma].items():
            c16 = runs["fp16"]["correct"][sigma][method]  # (T+1, n) or (1, n)
            agreement = (c16 == c32).float().mean(-1)
            assert (agreement >= AGREE).all(), (sigma, method, agreement)


def test_fp16_attack_runs_and_agrees_with_float32():
    pytest.importorskip("torchattacks")
    net, data = _net(), _data(n=16)
    x, y = data.tensors
    runs = {p: scale_eval.attack_study(net, x, y, eps=[2 / 255], timesteps=2, steps=5, batch_size=16,
                                       attacks=("apgd-ce",), precision=p) for p in (None, "fp16")}
    for key in ("t=0", "t=T"):
        c32, c16 = runs[None]["correct"][2 / 255][key], runs["fp16"]["correct"][2 / 255][key]  # (n,) each
        assert (c16 == c32).float().mean() >= 14 / 16, key  # an attack is a search: a near-tie may flip


def test_fp16_feedback_training_uses_a_gradient_scaler(monkeypatch):
    data = _data(n=32)
    scaled = []
    original = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, out: scaled.append(1) or original(self, out))
    runs = {}
    for precision in (None, "fp16"):
        net = _net()
        history = train.train_feedback(net, data, epochs=1, batch_size=8, lr=1e-3, seed=0, progress=False,
                                       precision=precision)
        runs[precision] = torch.tensor(history["step_loss"]), net.decoders.state_dict()
    assert len(scaled) == 4  # one scaled backward per fp16 step, none in float32
    (loss32, w32), (loss16, w16) = runs[None], runs["fp16"]
    assert not torch.equal(loss16, loss32)  # autocast did run in float16
    torch.testing.assert_close(loss16, loss32, rtol=1e-2, atol=1e-5)
    assert all(torch.isfinite(v).all() for v in w16.values())
