"""scripts/gpu_check.sh's CPU smoke run (so the one-command GPU measurement cannot rot): the CUDA parts are skipped
with a message, the CPU parts run, and the summary table lists every step."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine run the full check: bash scripts/gpu_check.sh")
def test_gpu_check_smoke_on_the_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_OUT=str(tmp_path))
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--smoke"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "== chapters: skipped (no CUDA GPU" in run.stdout and "(bench: CUDA skipped" in run.stdout
    table = run.stdout[run.stdout.index("| step"):]
    for row in ("| chapters", "| bench", "| paper", "| bench shallow CIFAR net | fp16", "| paper pefficientnet_b0"):
        assert row in table, table
    bench = json.loads((tmp_path / "bench.json").read_text())["results"]["shallow CIFAR net"]
    assert set(bench) == {"fp32", "bf16", "fp16"} and bench["fp32"]["agreement"] == 1.0
    paper = json.loads((tmp_path / "paper.json").read_text())[0]
    assert paper["preset"] == "pefficientnet_b0" and paper["attack_batch"] >= 1 and paper["batch_size"] >= paper["attack_batch"]
    assert paper["corruptions"] == 1 and paper["peak_mib"] > 0


def test_gpu_check_refuses_a_cpu_without_smoke(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_OUT=str(tmp_path))
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and "no CUDA GPU here" in run.stderr and "--smoke" in run.stderr
