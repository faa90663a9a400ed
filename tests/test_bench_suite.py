"""scripts/bench_suite.py: the price of every run of chapter 6's shared suite, from measured step costs."""
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_suite as B  # noqa: E402
from pcnet.experiments import robustness_config as RC  # noqa: E402


def test_run_costs_by_hand():
    """APGD: steps x restarts gradient steps; Square: queries forwards; AutoAttack: 1,900 steps + 5,000 forwards."""
    assert B.run_cost(("dynamics", "apgd-ce", 0.02, 100, 3), 2.0, 0.5) == 600.0
    assert B.run_cost(("t0", "apgd-dlr", 0.02, 200, 3), 0.1, 0.5) == pytest.approx(60.0)
    assert B.run_cost(("mean", "square", 0.02, 5000, 1), 2.0, 0.5) == 2500.0
    assert B.run_cost(("zero", "autoattack", 0.02, 0, 1), 1.0, 0.25) == 1900 + 1250
    with pytest.raises(ValueError, match="no cost model"):
        B.run_cost(("t0", "pgd", 0.02, 10, 1), 1.0, 1.0)


def test_every_run_of_the_suite_has_a_price():
    """A new attack added to the suite must get a cost model (else the projection silently leaves it out)."""
    runs = RC._runs(RC.Config.suite_of(backbone_seed=0))
    assert {r[1] for r in runs} == {"apgd-ce", "apgd-dlr", "square", "autoattack"}
    assert all(B.run_cost(r, 1.0, 1.0) > 0 for r in runs)


def test_a_timed_model_returns_two_positive_costs():
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    step, forward = B.time_model(model, x, y, repeats=2, now=B._timer("cpu"))
    assert step > 0 and forward > 0
