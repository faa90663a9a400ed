"""Concurrent use (issue 11, items 1 and 3): hooks act only in the calling thread; the backbone runs in eval mode."""
import threading

import pytest
import torch
from torch import nn

import pcnet


def bn_cnn():
    """A small CNN with BatchNorm (whose train mode would change both the output and the running statistics)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(6 * 16, 3))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = bn_cnn()
    with torch.no_grad():  # non-trivial running statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    net_a = pcnet.predify(model, layers=["2", "6"], input_shape=(1, 16, 16), alpha=0.1)
    net_b = pcnet.predify(model, layers=["2"], input_shape=(1, 16, 16), beta=0.5, alpha=0.3)  # same backbone
    inputs = [torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    return model, net_a, net_b, inputs


def _run_threads(jobs, *, repeats):
    """Run each job(i) ``repeats`` times in its own thread, all started together; returns the errors raised."""
    errors, barrier = [], threading.Barrier(len(jobs), timeout=60)

    def worker(job):
        barrier.wait()
        try:
            for i in range(repeats):
                job(i)
        except Exception as err:  # collected: a failing thread must fail the test
            errors.append(err)
    threads = [threading.Thread(target=worker, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return errors


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_concurrent_calls_equal_single_thread_results(setup, grad):
    """4 threads x 40 calls: one PredNet from two threads, a second PredNet on the same backbone, and a plain
    model(x); every output equals the single-thread reference."""
    model, net_a, net_b, inputs = setup
    calls = {"a": lambda x: net_a(x, timesteps=3), "b": lambda x: net_b(x, timesteps=2), "plain": model}
    with torch.set_grad_enabled(grad):
        reference = {k: [f(x).detach() for x in inputs] for k, f in calls.items()}
    wrong = []

    def job(kind):
        def call(i):
            with torch.set_grad_enabled(grad):
                out = calls[kind](inputs[i % len(inputs)]).detach()
            if not torch.allclose(out, reference[kind][i % len(inputs)], rtol=1e-5, atol=1e-6):
                wrong.append((kind, i))
        return call
    errors = _run_threads([job("a"), job("a"), job("b"), job("plain")], repeats=40)
    assert errors == [] and wrong == []
    assert all(not m._forward_hooks for m in model.modules())


def test_backbone_in_train_mode_runs_in_eval_mode_and_keeps_its_statistics(setup):
    model, net_a, _, inputs = setup
    x = inputs[0]
    with torch.no_grad():
        expected = net_a(x, timesteps=2)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # the user's call after predify
    with torch.no_grad():
        got = net_a(x, timesteps=2)
        rescaled = pcnet.rescaled_forward(net_a, x, scale=1.0)
    loss, _ = pcnet.feedback_loss(net_a, x)
    assert torch.allclose(got, expected, atol=1e-6)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(rescaled, model(x), atol=1e-6)
    assert torch.isfinite(loss)
    assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())  # running stats unchanged
    model.train()
    net_a(x, timesteps=1)
    assert all(m.training for m in model.modules())  # the user's flags are restored after each call


def test_eval_mode_nests_across_threads(setup):
    """Two overlapping eval_mode blocks on one model: the first to end must not put it back in train mode."""
    from pcnet import wiring
    model = setup[0].train()
    first_in, second_out = threading.Event(), threading.Event()
    seen = []

    def first():
        try:
            with wiring.eval_mode(model):
                first_in.set()
                second_out.wait(timeout=30)
                seen.append(model.training)
        finally:
            first_in.set()
    t = threading.Thread(target=first)
    t.start()
    assert first_in.wait(timeout=30)
    try:
        with wiring.eval_mode(model):
            pass  # ends while the first block is still running
    finally:
        second_out.set()
        t.join(timeout=30)
    assert seen == [False] and model.training
