"""Feedback checkpoints in the original package's layout, and the download helper.

The reference dynamics below are written from the paper's update equation and the original package's error
(a mean squared error over the batch, or with PCoderN's rescaling numel / sqrt(C)), not from pcnet's code.
"""
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pcnet.experiments import download as dl
from pcnet.experiments import released, zoo
from pcnet.experiments.weights import save_weights

SIZE = 64


def _original_decoders():
    """The authors' PEfficientNetB0 pmodules, built here from their description (not from zoo)."""
    chans = [3, 32, 16, 24, 40, 80, 112, 192, 320]
    out = []
    for n in range(8):
        conv = nn.ConvTranspose2d(chans[n + 1], chans[n], kernel_size=3, stride=1, padding=1)
        out.append(nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="bilinear"), conv) if n in (0, 2, 3, 4, 6)
                   else nn.Sequential(conv))
    return out


def _jacobian_c(pmodule, shape):
    """The original's C: nonzero entries of d prediction / d (one state element at the centre)."""
    c, h, w = shape

    def one_hot(v):
        rep = torch.zeros(1, c, h, w, dtype=torch.float64)
        rep[0, c // 2, h // 2, w // 2] = v[0]
        return pmodule(rep)
    _, jac = torch.func.jvp(one_hot, (torch.ones(1, dtype=torch.float64),), (torch.ones(1, dtype=torch.float64),))
    return int((jac != 0).sum())  # one column of the Jacobian: forward mode computes it in one pass


def _original_checkpoint(shapes):
    """A whole-network state dict in the original layout with random decoders, C_sqrt and a backbone entry."""
    torch.manual_seed(11)
    pmodules = [d.double() for d in _original_decoders()]
    state = {"backbone.features.0.0.weight": torch.zeros(1)}
    for n, d in enumerate(pmodules, start=1):
        state.update({f"pcoder{n}.pmodule.{k}": v for k, v in d.state_dict().items()})
        # the original's probe finds fewer nonzeros where a ReLU is off; take C - n so the file's C must be used
        state[f"pcoder{n}.C_sqrt"] = torch.tensor(math.sqrt(_jacobian_c(d, shapes[n - 1]) - n))
    return state, pmodules


def _reference(net, pmodules, x, *, T, beta, lam, alpha, scale, c_sqrt):
    """e_n(t+1) = beta F_n(e_{n-1}(t+1)) + lam D_{n+1}(e_{n+1}(t)) + (1-beta-lam) e_n(t) - alpha grad eps_{n-1}(t)."""
    feats = net.backbone.features
    segments = [feats[i] for i in range(8)]

    def head(e):  # features.8 is the 1x1 head convolution, after the last PCoder
        return net.backbone.classifier(torch.flatten(net.backbone.avgpool(feats[8](e)), 1))

    def errors(e):
        preds, grads = [], []
        for n, d in enumerate(pmodules):
            rep = e[n].detach().requires_grad_()
            with torch.enable_grad():
                p = d(rep)
                (g,) = torch.autograd.grad(F.mse_loss(p, x if n == 0 else e[n - 1]), rep)
            preds.append(p.detach())
            grads.append(g * p.numel() / c_sqrt[n] if scale == "projective" else g)
        return preds, grads

    e, h = [], x
    for f in segments:
        h = f(h)
        e.append(h)
    logits = [head(e[-1])]
    for _ in range(T):
        preds, grads = errors(e)
        new, h = [], x
        for n, f in enumerate(segments):
            h = f(h)
            fb = lam[n] * preds[n + 1] if n < 7 else 0
            h = beta[n] * h + fb + (1 - beta[n] - lam[n]) * e[n] - alpha[n] * grads[n]
            new.append(h)
        e = new
        logits.append(head(e[-1]))
    return torch.stack(logits)


@pytest.mark.parametrize("scale", ["mean", "projective"])
def test_original_checkpoint_gives_the_original_dynamics(tmp_path, scale):
    torch.manual_seed(0)
    beta = [0.5, 0.4, 0.6, 0.3, 0.5, 0.7, 0.4, 0.6]
    lam = [0.2, 0.1, 0.3, 0.2, 0.1, 0.2, 0.3, 0.0]
    alpha = [400.0] * 8 if scale == "mean" else [0.02] * 8  # the batch mean makes the error term tiny
    net = zoo.pefficientnet_b0(backend="torchvision", image_size=SIZE, normalize=False, beta=beta, lam=lam,
                               alpha=alpha, error_scale=scale).double()
    state, pmodules = _original_checkpoint(net.shapes)
    torch.save(state, tmp_path / "peffb0_original.pth")
    report = released.load_feedback(net, tmp_path / "peffb0_original.pth")
    assert report["layout"] == "original" and report["ignored"] == ["backbone.features.0.0.weight"]
    c_sqrt = [float(state[f"pcoder{n}.C_sqrt"]) for n in range(1, 9)]
    torch.testing.assert_close(net.projective_fields, torch.tensor(c_sqrt, dtype=torch.float64) ** 2)
    x = torch.randn(3, 3, SIZE, SIZE, dtype=torch.float64)  # normalised images, as the original was fed
    with torch.no_grad():
        ours = net(x, timesteps=4)
    expected = _reference(net, pmodules, x, T=4, beta=beta, lam=lam, alpha=alpha, scale=scale, c_sqrt=c_sqrt)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
    no_error = _reference(net, pmodules, x, T=4, beta=beta, lam=lam, alpha=[0.0] * 8, scale=scale, c_sqrt=c_sqrt)
    assert (no_error[4] - expected[4]).abs().max() > 1e-6  # the error term matters in this check


@pytest.fixture(scope="module")
def vgg():
    return zoo.pvgg16(image_size=32)


def _vgg_original(vgg, *, seed=3):
    """PVGG16 decoders in the original layout (pcoder1's pmodule is a bare ConvTranspose2d)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for old, new in released.ORIGINAL_LAYOUT["pvgg16"].items():
        for s in ("weight", "bias"):
            out[f"{old}.{s}"] = torch.randn(vgg.decoders.state_dict()[f"{new}.{s}"].shape, generator=g) * 0.01
    return out


def test_vgg_original_layout_maps_onto_the_decoders_and_predicts_unit_images(vgg):
    state = _vgg_original(vgg)
    report = released.load_feedback(vgg, {"state_dict": {"module." + k: v for k, v in state.items()}})
    assert report["layout"] == "original" and report["C"] == {}
    assert torch.equal(vgg.decoders[3][0].weight, state["pcoder4.pmodule.0.weight"])
    assert torch.equal(vgg.decoders[4][0].bias, state["pcoder5.pmodule.0.bias"])
    # PCoder 1 now predicts the [0, 1] image: the original prediction of the normalised image, mapped back
    e1 = torch.rand(2, 64, 32, 32)
    original = F.conv_transpose2d(e1, state["pcoder1.pmodule.weight"], state["pcoder1.pmodule.bias"], padding=2)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (zoo.IMAGENET_MEAN, zoo.IMAGENET_STD))
    with torch.no_grad():
        torch.testing.assert_close(vgg.decoders[0](e1), original * std + mean, rtol=1e-5, atol=1e-6)


def test_per_pcoder_files(tmp_path, vgg):
    state = _vgg_original(vgg, seed=4)
    paths = []
    for n in range(1, 6):
        part = {k.removeprefix(f"pcoder{n}.pmodule."): v for k, v in state.items() if k.startswith(f"pcoder{n}.")}
        paths.append(tmp_path / f"pc{n}.pth")
        torch.save({"pcoderweights": {"pmodule." + k: v for k, v in part.items()}} if n % 2 else part, paths[-1])
    released.load_feedback(vgg, paths)
    assert torch.equal(vgg.decoders[1][0].weight, state["pcoder2.pmodule.0.weight"])
    assert torch.equal(vgg.decoders[2][0].weight, state["pcoder3.pmodule.0.weight"])


def test_bad_checkpoints_name_the_fix_and_change_nothing(vgg):
    before = {k: v.clone() for k, v in vgg.decoders.state_dict().items()}
    effnet = {f"pcoder{n}.pmodule.0.weight": torch.zeros(1) for n in range(1, 9)}
    with pytest.raises(ValueError, match=r"PCoders 1..8, but pvgg16 has 5: it is for another preset \(pefficientnet_b0\)"):
        released.load_feedback(vgg, effnet)
    partial = _vgg_original(vgg)
    del partial["pcoder3.pmodule.0.bias"]
    with pytest.raises(ValueError, match=r"lacks \['pcoder3.pmodule.0.bias'\].*download it again"):
        released.load_feedback(vgg, partial)
    wrong = _vgg_original(vgg)
    wrong["pcoder2.pmodule.0.weight"] = torch.zeros(128, 64, 3, 3)
    with pytest.raises(ValueError, match=r"pcoder2.pmodule.0.weight has shape \(128, 64, 3, 3\).*another network"):
        released.load_feedback(vgg, wrong)
    with pytest.raises(ValueError, match="neither this network's decoders.*pcoderN.pmodule"):
        released.load_feedback(vgg, {"conv.weight": torch.zeros(1)})
    for k, v in vgg.decoders.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_pcnet_checkpoint_round_trip_through_the_builder(tmp_path):
    torch.manual_seed(5)
    trained = zoo.presnet18(image_size=32)
    path = tmp_path / "presnet18_feedback.pt"
    save_weights(path, trained.decoders.state_dict(), command="test", seed=5)
    loaded = zoo.presnet18(image_size=32, feedback=path)
    for k, v in trained.decoders.state_dict().items():
        assert torch.equal(loaded.decoders.state_dict()[k], v), k
    path.write_bytes(path.read_bytes()[:-4] + b"XXXX")  # sha256-checked: a changed file is refused
    with pytest.raises(RuntimeError, match="sha256"):
        zoo.presnet18(image_size=32, feedback=path)


def test_download_records_the_hash_then_checks_it(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"feedback weights" * 1000)
    url, dest = src.as_uri(), tmp_path / "cache" / "w.bin"
    with pytest.warns(UserWarning, match="no published sha256.*recorded"):
        dl.download(url, dest, progress=False)
    registry = json.loads((dest.parent / dl.REGISTRY_NAME).read_text())["files"]["w.bin"]
    assert registry["published"] is False and registry["sha256"] == dl.recorded_sha256(dest) and registry["url"] == url
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning once recorded
        assert dl.download(url, dest, progress=False) == dest
    dest.write_bytes(b"changed")
    with pytest.raises(RuntimeError, match="corrupt or changed; delete it"):
        dl.download(url, dest, progress=False)


def test_download_with_a_wrong_published_hash_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    with pytest.raises(RuntimeError, match="expected 00.*nothing was kept"):
        dl.download(src.as_uri(), tmp_path / "out" / "w.bin", sha256="00" * 32, progress=False)
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(RuntimeError, match="could not download.*pass the file's path"):
        dl.download((tmp_path / "absent.bin").as_uri(), tmp_path / "out" / "x.bin", progress=False)
    assert list((tmp_path / "out").iterdir()) == []


# --- the authors' other layouts (key names as in miladmozafari/predify and bhavinc/predify2021) and refusals ---

def _authors_pc_files(tmp_path, state, *, c_sqrt):
    """One file per PCoder as the authors' trainer saves it: {"pcoderweights": PCoder state dict, "optimizer",
    "epoch"}; a PCoderN's state dict also holds its ``C_sqrt`` buffer (-1 until measured)."""
    paths = []
    for n in range(1, 6):
        pc = {"pmodule." + k.removeprefix(f"pcoder{n}.pmodule."): v for k, v in state.items()
              if k.startswith(f"pcoder{n}.pmodule.")}
        pc["C_sqrt"] = torch.tensor(float(c_sqrt[n - 1]))
        paths.append(tmp_path / f"pnet_pretrained_pc{n}_049.pth")
        torch.save({"pcoderweights": pc, "optimizer": {"state": {}, "param_groups": []}, "epoch": 49}, paths[-1])
    return paths


def test_per_pcoder_files_with_c_sqrt(tmp_path, vgg):
    state = _vgg_original(vgg, seed=6)
    c_sqrt = [3.0, 40.0, -1.0, 70.0, 90.0]  # PCoder 3 never measured its C (-1): pcnet's structural count stays
    before = vgg.projective_fields.clone()
    report = released.load_feedback(vgg, _authors_pc_files(tmp_path, state, c_sqrt=c_sqrt))
    assert report["layout"] == "original" and report["C"] == {0: 9.0, 1: 1600.0, 3: 4900.0, 4: 8100.0}
    assert vgg.projective_fields[2] == before[2] and vgg.projective_fields[1] == 1600.0
    assert torch.equal(vgg.decoders[4][0].weight, state["pcoder5.pmodule.0.weight"])


def test_sequential_pcoder1_layout(vgg):
    state = _vgg_original(vgg, seed=7)
    for s in ("weight", "bias"):  # the June-2021 PVGG16 instance: pcoder1.pmodule = Sequential(ConvTranspose2d)
        state[f"pcoder1.pmodule.0.{s}"] = state.pop(f"pcoder1.pmodule.{s}")
    report = released.load_feedback(vgg, {"model": state})
    assert report["ignored"] == []
    mean, std = (torch.tensor(v) for v in (zoo.IMAGENET_MEAN, zoo.IMAGENET_STD))
    torch.testing.assert_close(vgg.decoders[0][0].bias, state["pcoder1.pmodule.0.bias"] * std + mean)


def test_missing_pcoders_are_not_called_another_preset(tmp_path, vgg):
    state = _vgg_original(vgg, seed=8)
    paths = _authors_pc_files(tmp_path, state, c_sqrt=[1.0] * 5)
    with pytest.raises(ValueError, match=r"4 per-PCoder files were passed, but this network has 5 PCoders"):
        released.load_feedback(vgg, paths[:4])
    four = {k: v for k, v in state.items() if not k.startswith("pcoder5.")}
    with pytest.raises(ValueError, match=r"has PCoders \[1, 2, 3, 4\], but pvgg16 has 5: PCoder\(s\) \[5\] are missing"):
        released.load_feedback(vgg, four)
    seq = dict(state, **{"pcoder2.pmodule.1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected PCoder entries \['pcoder2.pmodule.1.weight'\].*expected"):
        released.load_feedback(vgg, seq)


def test_garbage_extra_keys_and_other_layers_are_refused(tmp_path):
    from pcnet.experiments.weights import save_decoders

    net = zoo.presnet18(image_size=32)
    before = {k: v.clone() for k, v in net.decoders.state_dict().items()}
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"e" * 300)  # was: KeyError: 101
    with pytest.raises(ValueError, match=r"garbage.pth is not a readable PyTorch checkpoint.*download it again"):
        released.load_feedback(net, garbage)
    extra = dict(net.decoders.state_dict(), **{"head.weight": torch.zeros(3)})  # was: "missing []"
    with pytest.raises(ValueError, match=r"also \['head.weight'\], which no decoder has"):
        released.load_feedback(net, extra)
    other = zoo.presnet18(image_size=64)  # the same decoder tensors, trained for other layer shapes
    path = tmp_path / "presnet18_64.pt"
    save_decoders(path, other, preset="presnet18", command="test", seed=0)
    with pytest.raises(ValueError, match=r"holds decoders trained for input_shape=\[3, 64, 64\].*this PredNet has "
                                         r"input_shape=\[3, 32, 32\]"):
        released.load_feedback(net, path)
    for k, v in net.decoders.state_dict().items():
        assert torch.equal(v, before[k]), k
