"""Feedback training at scale on a tiny synthetic ImageFolder: 2 gloo processes equal 1, exact resume, bad input."""
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pcnet.experiments import train_scale

ROOT = pathlib.Path(__file__).resolve().parent.parent
TORCHRUN = shutil.which("torchrun", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("torchrun")
# Two processes sum the loss gradient in two halves, then average: the same math as one process, in another
# floating-point order; after 6 Adam steps the decoder weights (of size ~0.2) differed by 1.5e-8 when measured.
ATOL, RTOL = 1e-6, 1e-5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 8 random 40x36 RGB PNGs."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class{c}").mkdir()
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def _args(folder, out, *extra):
    return ["feedback", "--preset", "pshallow_cifar", "--data", str(folder), "--weights", "none", "--image-size", "32",
            "--batch-size", "8", "--epochs", "2", "--workers", "0", "--lr", "0.01", "--out", str(out), *extra]


def _decoders(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def one_process(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "w.pt"
    train_scale.main(_args(folder, out))
    return _decoders(out)


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_two_gloo_processes_equal_one_with_the_same_global_batch(folder, tmp_path, one_process):
    out = tmp_path / "w.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "pcnet.experiments.train",
           *_args(folder, out, "--backend", "gloo")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 process(es)" in done.stdout
    two = _decoders(out)
    torch.manual_seed(0)
    initial = train_scale.build_preset("pshallow_cifar", image_size=32).decoders.state_dict()
    for key, value in one_process.items():
        torch.testing.assert_close(two[key], value, atol=ATOL, rtol=RTOL)
        assert (value - initial[key]).abs().max() > 100 * ATOL  # training moved them: the check has teeth


def test_resume_after_an_interruption_is_exact(folder, tmp_path):
    whole, split = tmp_path / "whole.pt", tmp_path / "split.pt"
    train_scale.main(_args(folder, whole, "--augment"))
    train_scale.main(_args(folder, split, "--augment", "--max-steps", "4", "--save-every", "1"))  # stops mid-epoch 2
    assert split.with_suffix(".ckpt").exists() and not split.exists()
    assert torch.load(split.with_suffix(".ckpt"), weights_only=True)["step"] == 4
    train_scale.main(_args(folder, split, "--augment"))  # the same command resumes
    assert not split.with_suffix(".ckpt").exists()
    resumed, reference = _decoders(split), _decoders(whole)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_augmentation_is_seeded_per_sample(folder):
    from pcnet.experiments import zoo

    net = train_scale.build_preset("pshallow_cifar", image_size=32)
    data = train_scale.SeededAugment(train_scale.image_folder(folder, transform=zoo.preprocessing(net, train=True)), seed=1)
    first = data[5]
    torch.rand(3)  # other random draws in between do not matter
    assert torch.equal(data[5], first)
    data.set_epoch(1)
    assert not torch.equal(data[5], first)  # a new epoch, a new crop


def test_not_an_image_folder_names_the_fix(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "w.pt"
    with pytest.raises(ValueError, match="not an ImageFolder: it needs one sub-folder of images per class"):
        train_scale.main(_args(empty, out))
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(empty / "loose.png")
    with pytest.raises(ValueError, match=r"loose images \['loose.png'\].*move the images into class folders"):
        train_scale.main(_args(empty, out))
    with pytest.raises(FileNotFoundError, match="is not a folder; pass an ImageFolder"):
        train_scale.main(_args(tmp_path / "absent", out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing written


def test_batch_and_backend_errors_name_the_fix(folder, tmp_path):
    with pytest.raises(ValueError, match=r"--batch-size 10 is not divisible by the number of processes 4.*multiple of 4"):
        train_scale.local_batch(10, 4)
    assert train_scale.local_batch(12, 4) == 3
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="'nccl' needs CUDA GPUs.*--backend gloo"):
            train_scale.distributed_setup(backend="nccl")
        with pytest.raises(ValueError, match="amp='on' needs a CUDA device"):
            train_scale.main(_args(folder, tmp_path / "w.pt", "--amp", "on"))
    with pytest.raises(ValueError, match="pass --image-size 32 --weights none"):
        train_scale.build_preset("pshallow_cifar", image_size=64)


def test_resume_with_other_options_is_refused(folder, tmp_path):
    out = tmp_path / "w.pt"
    train_scale.main(_args(folder, out, "--max-steps", "1"))
    with pytest.raises(ValueError, match="delete it to start afresh or pass the same options"):
        train_scale.main([*_args(folder, out), "--lr", "0.5"])
    assert not out.exists()
