"""Device and dtype handling: the DEVICE parameter, library paths that follow the model, bf16 autocast."""
import json
import pathlib

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import pcnet
import run_chapters
from pcnet.experiments import attacks, devices, evaluate, metrics, train, tuning

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def _backbone():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3))


def _net(*, seed=0, **kwargs):
    torch.manual_seed(seed)
    return pcnet.predify(_backbone(), layers=["1", "3"], input_shape=(1, 8, 8), beta=0.8, lam=0.1, alpha=0.01,
                         **kwargs).eval()


def _data(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)  # (n,1,8,8) float32 on the CPU, as the loaders give them
    return TensorDataset(x, torch.randint(0, 3, (n,), generator=g))


def test_resolve_device_parameter():
    assert devices.resolve("cpu") == torch.device("cpu")
    assert devices.resolve(None) == torch.device(devices.default())
    assert devices.default() == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="DEVICE='gpu0' is not a device"):
        devices.resolve("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_names_the_parameter():
    with pytest.raises(ValueError, match=r"DEVICE='cuda' but this machine has no CUDA GPU.*set DEVICE = \"cpu\""):
        devices.resolve("cuda")


def test_library_paths_follow_a_float64_model():
    """float32 CPU batches reach a float64 network in its dtype (the same code path moves them to a GPU)."""
    net, ds = _net().double(), _data()
    assert devices.of(net) == (torch.device("cpu"), torch.float64)
    history = train.train_feedback(net, ds, epochs=1, batch_size=8, lr=1e-3, seed=0, val_set=ds, progress=False)
    assert len(history["step_loss"]) == 3 and all(len(v) == 2 for v in history["step_loss"])
    assert evaluate.feedback_loss_on(net, ds).dtype == torch.float64
    assert evaluate.feedback_baseline_loss(net, ds).shape == (2,)
    assert evaluate.classifier_accuracy(net.backbone, ds)[1].shape == (24,)
    result = evaluate.evaluate_dynamics(net, ds, timesteps=2, record=("errors", "terms"), progress=False)
    assert result.correct.shape == (3, 24) and result.errors.shape == (3, 2)
    assert evaluate.state_distance_over_time(net, ds.tensors[0][:4], ds.tensors[0][4:8], timesteps=1).shape == (2, 2)
    images = (ds.tensors[0] * 255).to(torch.uint8)  # (24,1,8,8) like a cached corrupted set
    assert metrics.correct_per_timestep(net.backbone, images, ds.tensors[1]).shape == (1, 24)
    f_t = attacks.TimestepLogits(net, timestep=1)
    correct, adv = attacks.attack_correct(f_t, lambda x, y: x, ds.tensors[0], ds.tensors[1], batch_size=10)
    assert correct.device.type == "cpu" and adv.dtype == torch.float64 and adv.shape == (24, 1, 8, 8)


def test_tuning_follows_a_float64_model():
    net = _net(learnable=True).double()
    result = tuning.tune_hparams(net, _data(), timesteps=1, steps=2, batch_size=8, progress=False)
    assert len(result.losses) == 2


def test_bf16_autocast_matches_fp32():
    """bf16 autocast (8 mantissa bits: relative rounding 2^-8 = 0.4%) stays within 5% of fp32 here: the
    training loss of every step and layer, and the recorded reconstruction errors of the dynamics."""
    ds = _data(n=64)
    runs = {}
    for precision in (None, "bf16"):
        net = _net(seed=3)
        history = train.train_feedback(net, ds, epochs=1, batch_size=16, lr=1e-2, seed=0, progress=False,
                                       precision=precision)
        result = evaluate.evaluate_dynamics(net, ds, timesteps=3, record=("errors",), progress=False,
                                            precision=precision)
        runs[precision] = torch.tensor(history["step_loss"]), result
    (loss32, res32), (loss16, res16) = runs[None], runs["bf16"]
    assert loss16.dtype == torch.float32 and not torch.equal(loss16, loss32)  # autocast did run in bf16
    torch.testing.assert_close(loss16, loss32, rtol=5e-2, atol=1e-4)
    torch.testing.assert_close(res16.errors, res32.errors, rtol=5e-2, atol=1e-4)
    assert (res16.accuracy - res32.accuracy).abs().max() <= 4 / 64  # at most 4 of 64 images change class


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision must be one of"):
        devices.autocast("cpu", "int8")
    with pytest.raises(ValueError, match="precision must be None, 'fp32', 'bf16' or 'fp16' for training"):
        train.train_feedback(_net(), _data(), epochs=1, batch_size=8, lr=1e-3, seed=0, precision="int8",
                             progress=False)


@needs_cuda
def test_cuda_paths():
    net, ds = _net().to("cuda"), _data()
    history = train.train_feedback(net, ds, epochs=1, batch_size=8, lr=1e-3, seed=0, progress=False)
    assert len(history["step_loss"]) == 3
    result = evaluate.evaluate_dynamics(net, ds, timesteps=2, progress=False, precision="bf16")
    assert result.correct.device.type == "cpu" and result.correct.shape == (3, 24)
    correct, adv = attacks.attack_correct(attacks.TimestepLogits(net, timestep=1), lambda x, y: x,
                                          ds.tensors[0], ds.tensors[1])
    assert correct.shape == (24,) and adv.device.type == "cpu"


CHAPTERS = sorted((pathlib.Path(__file__).resolve().parent.parent / "book").glob("0*.ipynb"))


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_chapter_has_a_device_parameter_resolved_before_use(path):
    code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    if "torch" not in code:
        pytest.skip(f"{path.name} runs no PyTorch code (it only reads committed results): no DEVICE needed")
    params = run_chapters.declared_parameters(path)
    assert params["DEVICE"] == "'cuda' if torch.cuda.is_available() else 'cpu'"  # as ast.unparse writes it
    code = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    text = "\n".join(code)
    resolved = text.index("DEVICE = devices.resolve(DEVICE)")
    assert ".to(DEVICE)" not in text or text.index(".to(DEVICE)") > resolved
    assert "device=DEVICE" not in text[:resolved]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_chapter_given_cuda_without_cuda_stops_naming_the_parameter(tmp_path):
    path = CHAPTERS[0]
    with pytest.raises(run_chapters.ChapterFailed, match=r"DEVICE='cuda' but this machine has no CUDA GPU"):
        run_chapters.run_chapter(path, out=tmp_path, parameters={"DEVICE": "cuda"}, smoke=True)
