"""pcnet.experiments.tuning_study / tuning_report: the grid widens to an interior optimum (or says where it stops),
dominance by hand, the verdict family, resumable chunks keyed by the weights, the smoke CLI's scratch output."""
import dataclasses
import math

import pytest
import torch

from pcnet.experiments import dynamics_study as study
from pcnet.experiments import tuning_report as R
from pcnet.experiments import tuning_study as T


def _peak(beta, lam, alpha):
    """A synthetic score with one maximum at (beta, lam, alpha)."""
    def score(p):
        d = (p["beta"] - beta) ** 2 + (p["lam"] - lam) ** 2 + 0.01 * (math.log10(p["alpha"]) - math.log10(alpha)) ** 2
        return {"score": 1 - d}
    return score


CFG = T.Config(grid_beta=(0.5, 0.6, 0.7), grid_lam=(0.1, 0.2), grid_alpha=(1.0, 10.0))


def test_widening_walks_to_an_interior_optimum():
    grid = T.widen(_peak(0.3, 0.3, 0.1), CFG)
    best = study.best_point(grid["rows"])
    assert (best["beta"], best["lam"], best["alpha"]) == (0.3, 0.3, 0.1)
    assert grid["edges"] == {"beta": None, "lam": None, "alpha": None} and grid["stopped"] == "interior"
    assert min(grid["axes"]["beta"]) == 0.2 and max(grid["axes"]["lam"]) == 0.4 and min(grid["axes"]["alpha"]) == 0.01
    assert all(r["beta"] + r["lam"] <= 1 + 1e-9 for r in grid["rows"])  # the memory weight is never negative


def test_widening_stops_at_a_declared_limit_and_says_which_edge():
    grid = T.widen(_peak(0.0, 0.3, 1.0), CFG)  # the peak lies below beta's declared limit 0.1
    best = study.best_point(grid["rows"])
    assert best["beta"] == 0.1 and grid["edges"]["beta"] == "low" and grid["stopped"] == "declared limit"
    assert grid["edges"]["lam"] is None and grid["edges"]["alpha"] is None


def test_widening_respects_max_points():
    grid = T.widen(_peak(0.1, 0.1, 1e-3), dataclasses.replace(CFG, max_points=12))
    assert len(grid["rows"]) <= 12 and grid["stopped"] == "max_points (12)"


def test_an_optimum_on_beta_plus_lam_equal_one_is_named_as_the_constraint():
    grid = T.widen(_peak(0.7, 0.6, 1.0), CFG)  # infeasible peak: the best feasible point has beta + lam = 1
    best = study.best_point(grid["rows"])
    assert T.on_constraint(best) and not T.on_constraint({"beta": 0.4, "lam": 0.4})


def test_dominance_by_hand():
    compare = {("A", "B"): ("gain", "none"), ("A", "C"): ("none", "none"), ("B", "C"): ("cost", "cost"),
               ("A", "D"): ("gain", "cost"), ("B", "D"): ("none", "cost"), ("C", "D"): ("none", "none")}
    # A beats B on one axis and ties the other; C beats B on both; A vs D is a trade-off; D beats B on one axis
    assert R.dominance(compare) == {"A": [], "B": ["A", "C", "D"], "C": [], "D": []}


def _fake_result(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    rates = {"dynamics": (0.91, 0.85), "t0": (0.92, 0.77), "rescale": (0.90, 0.80), "BN adaptation": (0.92, 0.89),
             "TENT": (0.92, 0.89)}
    bits = {k: [study.pack(torch.rand(n, generator=g) < r) for r in v] for k, v in rates.items()}
    test = {axis: {"dynamics": {"t0": bits["t0"][i], "T": bits["dynamics"][i]},
                   **{m: {"T": bits[m][i]} for m in ("rescale", "BN adaptation", "TENT")}}
            for i, axis in enumerate(("clean", "noisy"))}
    return {"config": {"n_test": n, "sigma": 0.1}, "test": test}


def test_the_test_family_and_dominance_on_a_synthetic_result():
    result = _fake_result()
    fam = R.family(result)
    assert len(fam) == 8 and all(v.p_holm is not None and v.n == 400 for v in fam)
    assert fam[3].contrast == "test set: tuned dynamics − TENT, clean"
    acc = R.accuracies(result)
    by_points = R.dominance_by_points(result)
    for m, dominators in by_points.items():  # check against the accuracies directly
        for d in R.NAMES:
            wins = [acc[d][x][0] - acc[m][x][0] for x in R.AXES]
            assert (d in dominators) == (d != m and min(wins) >= 0 and max(wins) > 0)
    pairs = R.pairwise(result)
    assert len(pairs) == 20 and all(v.p_holm is not None for v in pairs)
    effect = {}
    for v in pairs:  # "a − b, axis" -> the effect of a − b and its mirror
        a, rest = v.contrast.split(" − ")
        b, axis = rest.rsplit(", ", 1)
        effect[(a, b, axis)] = v.effect
        effect[(b, a, axis)] = {"gain": "cost", "cost": "gain", "none": "none"}[v.effect]
    for m, dominators in R.dominance_by_verdicts(result).items():
        for d in R.NAMES:
            e = [effect.get((d, m, x)) for x in R.AXES]
            assert (d in dominators) == (d != m and "cost" not in e and "gain" in e)


def _fakes(monkeypatch, calls, digest="a" * 64):
    monkeypatch.setattr(T.chunks, "reference_inputs", lambda **k: {"decoders": digest})

    def point(cfg, p, *, noisy):
        calls.append(("val", noisy, p["beta"], p["lam"], p["alpha"]))
        return {"t0": 0.5, "score": _peak(0.3, 0.4, 1.0)(p)["score"], "diverged": False,
                "T": study.pack(torch.ones(cfg.n_val, dtype=torch.bool))}

    def method(cfg, tuned, m, *, noisy):
        calls.append(("test", noisy, m))
        out = {"T": study.pack(torch.arange(cfg.n_test) % 2 == 0)}
        return {**out, "t0": out["T"]} if m == "dynamics" else out

    monkeypatch.setattr(T, "_point", point)
    monkeypatch.setattr(T, "_method", method)


def test_chunks_resume_and_a_retrained_weight_changes_every_key(tmp_path, monkeypatch):
    calls = []
    _fakes(monkeypatch, calls)
    first = T.compute(T.SMOKE, cache=tmp_path, progress=False)
    n_first = len(calls)
    assert n_first > 0 and first["tuned"] == {"beta": 0.3, "lam": 0.4, "alpha": 1.0}
    again = T.compute(T.SMOKE, cache=tmp_path, progress=False)
    assert len(calls) == n_first and again["grid"] == first["grid"]  # every chunk found: nothing recomputed
    _fakes(monkeypatch, calls, digest="b" * 64)  # retrained decoders: a new sha256, so no old chunk counts
    T.compute(T.SMOKE, cache=tmp_path, progress=False)
    assert len(calls) == 2 * n_first


def test_smoke_cli_writes_nothing_under_data(tmp_path):
    from pcnet.experiments.data import DATA_DIR

    def snapshot():
        return {p: p.stat().st_mtime_ns for d in ("results", "chunks") for p in (DATA_DIR / d).rglob("*")
                if "ch4_tuning" in str(p) or d == "results"}

    before = snapshot()
    out = tmp_path / "tuning.json"
    assert T.main(["--smoke", "--out", str(out)]) == 0
    assert out.is_file() and any((tmp_path / "tuning.json.chunks").iterdir())
    assert snapshot() == before


def test_smoke_needs_a_scratch_output():
    with pytest.raises(SystemExit):
        T.main(["--smoke"])
    with pytest.raises(SystemExit):
        T.main(["--smoke", "--out", str(T.RESULT_PATH)])
