"""torch.compile (inductor) of a PredNet (issue 11): no_grad works and equals eager; grad mode, which needs a
double backward that compiled autograd lacks, fails with an error naming the fix. Slow (~40 s: compilation).

(With a single PCoder the compiled grad-mode forward can succeed; its ``backward()`` then fails with torch's own
"torch.compile with aot_autograd does not currently support double backward", outside any pcnet call.)"""
import shutil

import pytest
import torch
from torch import nn

import pcnet

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="inductor needs a C++ compiler on the CPU")


@needs_compiler
def test_compiled_prednet_no_grad_works_and_grad_mode_names_the_fix():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 16, 3))
    net = pcnet.predify(model, layers=["1", "4"], input_shape=(1, 16, 16))
    x = torch.rand(2, 1, 16, 16)
    compiled = torch.compile(net, backend="inductor")
    with torch.no_grad():
        assert torch.allclose(compiled(x, timesteps=2), net(x, timesteps=2), atol=1e-5)
    with pytest.raises(RuntimeError, match=r"torch.compile cannot run the dynamics with gradients enabled.*no_grad"):
        compiled(x, timesteps=2)


def test_compile_error_translation_keeps_other_errors():
    """The translation touches only torch.compile's double-backward failure; other RuntimeErrors pass unchanged."""
    from pcnet import wiring

    class Fake(nn.Module):
        def __init__(self, message):
            super().__init__()
            self.backbone, self.message = nn.Linear(1, 1), message

        @wiring.dynamics_call
        def run(self):
            raise RuntimeError(self.message)
    with pytest.raises(RuntimeError, match="cannot run the dynamics with gradients enabled"):
        Fake("torch.compile with aot_autograd does not currently support double backward").run()
    with pytest.raises(RuntimeError, match="^something else$"):
        Fake("something else").run()
