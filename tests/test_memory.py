"""Batch sizes from memory: the per-image estimate of an attack through the unrolled dynamics, checked against the
tensors autograd actually keeps, and the automatic batch that fits a device."""
import pathlib

import pytest
import torch

import run_chapters
from pcnet.experiments import memory, paper_scale, zoo

GIB = 2 ** 30


@pytest.fixture(scope="module")
def vgg64():
    torch.manual_seed(0)
    net = zoo.pvgg16(image_size=64).eval()
    return net, memory.attack_bytes_per_image(net)


def test_estimate_equals_the_saved_tensors_of_a_small_pvgg16(vgg64):
    """Measured at T = 0 and 1 on one image, extrapolated to T = 3 and 2 images: within 1 % of the bytes autograd
    saves in that pass (each storage once, parameters excluded). Measured here: 6 + 13·T MiB per 64-px image."""
    net, est = vgg64
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # (2, 3, 64, 64)
    direct = memory.saved_bytes(lambda: memory._attack_pass(net, x, 3), exclude=memory._param_ptrs(net))
    assert abs(2 * est.per_image(3) - direct) <= 0.01 * direct
    assert est.per_step > est.base > 0 and est.params > 500 * 2 ** 20  # VGG16's 138 M float32 weights
    # by hand: the step saves at least every PCoder state once (64, 128, 256, 512, 512 channels at 64..4 px, 4 bytes)
    states = 4 * (64 * 64 * 64 + 128 * 32 * 32 + 256 * 16 * 16 + 512 * 8 * 8 + 512 * 4 * 4)
    assert est.per_step > states


def test_chapter_defaults_fit_a_16_gb_gpu(vgg64):
    """PVGG16 at 224 px and T = 10 (the chapter's paper path): about 1.7 GiB per attacked image, so the old
    ATTACK_BATCH = 16 could not fit a 16 GB GPU; the "auto" batch does, by construction."""
    params = run_chapters.declared_parameters(pathlib.Path(__file__).resolve().parent.parent / "book" / "07_paper_scale.ipynb")
    assert params["BATCH"] == "'auto'" and params["ATTACK_BATCH"] == "'auto'"
    est = memory.scale_to(vgg64[1], 224)
    per_image = est.per_image(10)
    assert 1.4 * GIB < per_image < 2.0 * GIB
    free = 15 * GIB  # what a 16 GB T4 reports free (torch.cuda.mem_get_info), the CUDA context aside
    assert est.params + 16 * per_image > 16 * GIB  # the old constant
    attack = memory.auto_batch(per_image, free=free, params=est.params, backward=True)
    evaluation = memory.auto_batch(memory.eval_bytes_per_image(est), free=free, params=est.params, backward=False)
    assert 1 <= attack < 16 and evaluation > attack
    assert est.params + attack * per_image * memory.BACKWARD_FACTOR <= memory.FRACTION * free < 16 * GIB
    assert est.params + (attack + 1) * per_image * memory.BACKWARD_FACTOR > memory.FRACTION * free  # the largest


def test_resolve_batch_on_the_cpu_by_a_ram_limit(vgg64):
    net, est = vgg64
    printed = []
    batch = memory.resolve_batch("auto", net, timesteps=3, backward=True, ram_limit=2 * GIB, estimate=est,
                                 name="ATTACK_BATCH", report=printed.append)
    assert batch == int((0.8 * 2 * GIB - est.params) // (est.per_image(3) * memory.BACKWARD_FACTOR))
    assert printed[0].startswith(f'ATTACK_BATCH = "auto" -> {batch}: attack at T = 3') and "limited to 2.0 GiB" in printed[0]
    assert memory.resolve_batch(12, net, timesteps=3, backward=True) == 12
    with pytest.raises(ValueError, match=r'BATCH must be a positive integer or "auto".*got 0'):
        memory.resolve_batch(0, net, timesteps=3, backward=False)
    with pytest.raises(ValueError, match=r"one image needs about .* GiB.*lower TIMESTEPS or the image size"):
        memory.resolve_batch("auto", net, timesteps=3, backward=True, ram_limit=GIB, estimate=est, report=printed.append)


def test_paper_scale_resolves_auto_batches(vgg64):
    net, est = vgg64
    cfg = {"batch_size": "auto", "attack_batch": 4, "timesteps": 2, "ram_limit": 4 * GIB}
    printed = []
    out = paper_scale.resolve_batches(net, cfg, report=printed.append)
    assert out["attack_batch"] == 4 and out["batch_size"] == memory.auto_batch(
        memory.eval_bytes_per_image(est), free=4 * GIB, params=est.params, backward=False)
    assert len(printed) == 1 and printed[0].startswith('BATCH = "auto"')
