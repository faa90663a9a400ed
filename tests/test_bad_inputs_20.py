"""Issue 20, the library-side classes: every bad input gets the right result or a clear error naming the fix."""
import pytest
import torch
from torch.utils.data import TensorDataset

import pcnet
from pcnet.experiments import evaluate, models


# --------------------------------------------------------------------------- half precision
def test_fp16_dynamics_on_a_large_batch_agree_with_float32():
    """The finiteness check summed in fp16 and overflowed 65504 on a batch of small states (a false
    FloatingPointError); it sums in float32 now. Tolerance as stated in PredNet's docstring."""
    torch.manual_seed(0)
    net = models.pshallow_cifar()
    with torch.no_grad():
        net.backbone[-1].weight.mul_(30)  # logits of order 1, so that top-1 agreement means something
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # (64, 3, 32, 32)
    with torch.no_grad():
        ref = net(x, timesteps=5)  # (6, 64, 10) float32
        labels = ref[0].argmax(-1)  # (64,)
        amp = evaluate.evaluate_dynamics(net, TensorDataset(x, labels), timesteps=5, precision="fp16",
                                         batch_size=64, progress=False)
        half = net.half()
        states, _ = half.feedforward(x.half())
        assert not torch.isfinite(states[0].sum())  # the old check's sum overflows: this batch would have failed
        logits = half(x.half(), timesteps=5)  # (6, 64, 10) float16
    assert logits.dtype == torch.float16
    agreement = (logits.argmax(-1) == ref.argmax(-1)).float().mean(-1)  # (6,)
    assert (agreement >= 0.95).all(), agreement
    assert (logits.float() - ref).abs().max() <= 0.01 * ref.abs().max()
    assert (amp.correct.float().mean(1) >= 0.95).all()  # autocast fp16: >= 95 % agree with float32 t = 0 top-1
