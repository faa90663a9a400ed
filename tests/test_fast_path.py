"""The fast (no-grad) path's engineering: the constant prefix skipped, reused buffers, channels-last decoders.

Each shortcut must leave the numbers as the plain equations give them (tests/test_core.py checks the equations
themselves; here: the shortcuts against the slow path and against each other).
"""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import pcnet
from pcnet import decoders as dec
from pcnet import wiring
from pcnet.experiments import models as presets


class Counting(nn.Module):
    """Wraps a module and counts its calls (a counter, not a hook: hooks switch the prefix skip off)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def nested_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1),
                         nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1)),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3)).eval()


def test_sequential_suffix_runs_the_rest_of_the_model():
    model, x = nested_model(), torch.rand(2, 3, 8, 8)
    suffix = wiring.sequential_suffix(model, "1.0")
    assert suffix == [model[1][1], model[1][2], model[2], model[3], model[4]]
    h = model[1][0](model[0](x))
    for m in suffix:
        h = m(h)
    assert torch.equal(h, model(x))
    assert wiring.sequential_suffix(model, "4") == []


def test_sequential_suffix_refuses_what_it_cannot_know():
    assert wiring.sequential_suffix(torchvision.models.vgg11(), "features.1") is None  # VGG.forward is not a chain
    model = nested_model()
    handle = model[0].register_forward_hook(lambda *a: None)  # a hook on a skipped module must keep firing
    assert wiring.sequential_suffix(model, "1.0") is None
    handle.remove()
    handle = model[1].register_forward_pre_hook(lambda *a: None)  # ... and one on a container
    assert wiring.sequential_suffix(model, "1.0") is None
    handle.remove()
    assert wiring.sequential_suffix(model, "1.0") is not None


def test_constant_prefix_runs_once_and_changes_nothing():
    torch.manual_seed(1)
    model = presets.shallow_cifar_net().eval()
    model[0] = Counting(model[0])
    net = presets.pshallow_cifar(model, beta=0.7, lam=0.2, alpha=0.05)
    x = torch.rand(3, 3, 32, 32)
    model[0].calls = 0
    with torch.no_grad():
        skipped = net(x, timesteps=4)
    assert model[0].calls == 1  # the t = 0 pass only: F_1(x) is reused at t = 1..4
    handle = model[0].register_forward_hook(lambda *a: None)  # forces the whole backbone at every step
    model[0].calls = 0
    with torch.no_grad():
        whole = net(x, timesteps=4)
    handle.remove()
    assert model[0].calls == 5
    assert torch.equal(skipped, whole)


def shallow(**hp):
    torch.manual_seed(2)
    net = presets.pshallow_cifar(**hp)
    for d in net.decoders:  # trained-looking decoders: small weights, so the dynamics stay bounded
        for p in d.parameters():
            p.data.mul_(0.5)
    return net


def test_fast_path_equals_recorded_run_and_the_differentiable_path():
    net, x = shallow(beta=0.6, lam=0.3, alpha=0.05), torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        fast = net(x, timesteps=5)  # workspace buffers, channels-last decoders, prefix skipped
        recorded = net.run(x, timesteps=5, record=("states", "predictions"))
    slow = net.run(x, timesteps=5, record=("states", "predictions"))  # autograd path, fresh tensors everywhere
    assert torch.equal(fast, recorded.logits)  # recording copies what it keeps and changes nothing
    torch.testing.assert_close(fast, slow.logits.detach(), rtol=1e-4, atol=1e-5)
    for kept, reference in zip(recorded.states + recorded.predictions, slow.states + slow.predictions):
        torch.testing.assert_close(kept, reference.detach(), rtol=1e-4, atol=1e-5)  # no buffer overwrote a record
    assert not torch.equal(recorded.states[0][2], recorded.states[0][4])  # the dynamics do move


def test_fast_path_leaves_its_inputs_alone():
    net, x = shallow(alpha=0.05), torch.rand(2, 3, 32, 32)
    before = x.clone()
    with torch.no_grad():
        states, _ = net.feedforward(x)
        kept = [s.clone() for s in states]
        net(x, timesteps=3)
        for decoder, state, target in zip(net.decoders, states, [x] + states[:-1]):
            workspace = {}
            dec.forward_with_tape(decoder, state, workspace=workspace)
            pcnet.dynamics.error_gradient_adjoint(decoder, state, target, scale=0.1, workspace=workspace)
    assert torch.equal(x, before)
    assert all(torch.equal(a, b) for a, b in zip(states, kept))


@pytest.mark.parametrize("bias", [True, False])
def test_folded_forward_equals_the_transposed_convolution(bias):
    torch.manual_seed(3)
    z, weight = torch.randn(2, 5, 6, 7), torch.randn(5, 4, 4, 4)
    b = torch.randn(4) if bias else None
    expected = F.conv_transpose2d(z, weight, b, stride=2, padding=1)  # (2, 4, 12, 14)
    out = dec.folded_forward(z, weight, b)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected)
    buffer = torch.empty(2, 4, 12, 14, memory_format=torch.channels_last)
    again = dec.folded_forward(z, weight, b, out=buffer, phase=dec.phase_kernel(weight, b))
    assert again.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(again, expected)


def test_scratch_reuses_a_buffer_only_for_the_same_request():
    like, workspace = torch.rand(2, 3, 4, 5), {}
    a = dec.scratch(workspace, "k", like)
    assert dec.scratch(workspace, "k", like) is a
    assert dec.scratch(workspace, "k", like, channels_last=True) is not a  # another layout: a new buffer
    assert dec.scratch(workspace, "k", like, (2, 3, 4, 6)).shape == (2, 3, 4, 6)
    assert dec.scratch(None, "k", like) is not dec.scratch(None, "k", like)
    cl = dec.to_channels_last(workspace, "c", like)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, like)


def test_channels_last_only_for_small_kernels():
    vgg = presets.vgg16_decoders()
    assert [dec.prefers_channels_last(d) for d in vgg] == [True, False, False, False, False]
    auto = dec.auto_decoder(source=(8, 4, 4), target=(4, 8, 8), relu=True)
    assert dec.prefers_channels_last(auto)
    assert not dec.prefers_channels_last(nn.Sequential(nn.Identity()))


def saved_size(module):
    buffer = io.BytesIO()
    torch.save(module, buffer)
    return buffer.tell()


def test_the_network_keeps_no_buffers_between_calls():
    net, x = shallow(alpha=0.05), torch.rand(4, 3, 32, 32)
    size = saved_size(net)
    with torch.no_grad():
        first = net(x, timesteps=3)
    assert saved_size(net) == size  # the workspace lives and dies with one call
    with torch.no_grad():
        assert torch.equal(net(x, timesteps=3), first)
        assert torch.equal(copy.deepcopy(net)(x, timesteps=3), first)


def test_benchmark_counts_the_macs_a_timestep_runs():
    import bench_dynamics  # scripts/ is on the path (conftest)
    net = presets.pshallow_cifar()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        states, _ = net.feedforward(x)
        suffix = wiring.sequential_suffix(net.backbone, net.layers[0])
        conv1 = 32 * 32 * 12 * 3 * 25
        conv2, conv3, head = 16 * 16 * 18 * 12 * 25, 8 * 8 * 24 * 18 * 25, 384 * 120 + 120 * 10  # by hand
        assert bench_dynamics.conv_macs(net.backbone, x) == conv1 + conv2 + conv3 + head
        assert bench_dynamics.suffix_macs(suffix, states[0]) == conv2 + conv3 + head
        # decoders as run: 3x3 transposed conv 12->3 at 32x32; folded 4x4 stride-2 18->12 and 24->18
        expected = 32 * 32 * 3 * 12 * 9 + 16 * 16 * 12 * 18 * 16 + 8 * 8 * 18 * 24 * 16
        assert sum(bench_dynamics.executed_decoder_macs(d, s) for d, s in zip(net.decoders, states)) == expected


def test_benchmark_runs_under_bf16_autocast(capsys, one_thread):
    import bench_dynamics
    ratio = bench_dynamics.bench("shallow", lambda: presets.pshallow_cifar(), batch=4, timesteps=2, repeats=1,
                                 device="cpu", amp=True)
    out = capsys.readouterr().out
    assert "bfloat16 autocast" in out and "cpu" in out and ratio == ratio and ratio > 0  # a finite, positive cost
    if not torch.cuda.is_available():  # asking for a GPU that is not there: the error names the option
        with pytest.raises(ValueError, match="--device"):
            bench_dynamics.main(["--device", "cuda", "--which", "shallow"])


@pytest.mark.parametrize("build", [lambda: presets.pvgg16(image_size=32), lambda: presets.pefficientnet_b0(image_size=32),
                                   lambda: presets.presnet18(image_size=32)], ids=["vgg16", "efficientnet_b0", "resnet18"])
def test_fast_path_equals_differentiable_path_on_the_presets(build):
    torch.manual_seed(6)
    net, x = build(), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        fast = net(x, timesteps=2)
    slow = net(x, timesteps=2)
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-4, atol=1e-5)
    assert not torch.equal(fast[2], fast[0])
