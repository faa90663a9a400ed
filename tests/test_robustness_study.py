"""pcnet.experiments.robustness_study / robustness_report: jobs, hashed resumable chunks, the attacked models,
worst case, convergence and the verdict families (tiny models and hand-made outcomes)."""
import dataclasses
import json

import pytest
import torch
from torch import nn

import pcnet
from pcnet.experiments import chunks, robustness_report as RR
from pcnet.experiments import robustness_study as R
from pcnet.experiments import attacks, stats, weights

TINY = R.Config(per_class=1, timesteps=2, eps_sweep=(0.05, 0.2), eps_main=0.05, steps=3, restarts=2, weak_steps=2,
                queries=4, queries_main=6, last_k=1, block=4, autoattack=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    """A predified 3-class 8x8 CNN (untrained decoders) and 6 images."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 3))
    net = pcnet.predify(model, layers=["1", "4"], input_shape=(1, 8, 8), beta=0.6, lam=0.3, alpha=0.05).eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x, timesteps=2)[-1].argmax(-1)  # (6,): every image starts correct
    return net, x, y


def test_config_checks_its_budgets():
    with pytest.raises(ValueError, match="eps_main"):
        R.Config(eps_main=0.03)
    with pytest.raises(ValueError, match="strong budget"):
        R.Config(weak_steps=200)
    with pytest.raises(ValueError, match="unknown models"):
        R.Config(controls=("zeros",))
    assert R.Config().digest() != R.Config(steps=101).digest()


def test_jobs_main_eps_first_autoattack_last_keys_unique():
    c = R.Config()
    js = R.jobs(c, 200)
    assert len({j.key for j in js}) == len(js) and len(js) % 4 == 0  # 4 blocks of 50
    assert all(j.eps == c.eps_main for j in js[:48])  # strong + weak budgets at the main eps come first
    assert [j.attack for j in js[-8:]] == ["autoattack"] * 8
    strong = {(j.model, j.attack) for j in js if j.eps == c.eps_main and j.budget in (c.steps, c.queries_main)}
    assert {("t0", "apgd-ce"), ("dynamics", "apgd-dlr"), ("dynamics", "square"), ("shuffled", "apgd-ce")} <= strong


def test_attacked_models_are_the_evaluated_functions(tiny):
    net, x, _ = tiny
    with torch.no_grad():
        ref = {f: net(x, timesteps=2, feedback=f)[-1] for f in ("prediction", "zero", "shuffled")}
        m = {n: attacks.attacked_model(net, n, timesteps=2, last_k=1) for n in ("t0", "dynamics", "zero", "shuffled",
                                                                          "rescale", "bpda-last-k")}
        assert torch.allclose(m["t0"](x), net(x)[0], atol=1e-5)
        assert torch.allclose(m["dynamics"](x), ref["prediction"], atol=1e-5)
        assert torch.allclose(m["bpda-last-k"](x), ref["prediction"], atol=1e-5)
        assert torch.allclose(m["zero"](x), ref["zero"], atol=1e-5)
        assert torch.allclose(m["shuffled"](x), ref["shuffled"], atol=1e-5)
        assert torch.allclose(m["shuffled"](x[:1]), ref["prediction"][:1], atol=1e-5)  # batch of one: own prediction
        scale = [pcnet.dynamics.fixed_point_scale(beta=0.6, lam=0.3), 1.0]  # the top PCoder gets no feedback
        assert torch.allclose(m["rescale"](x), pcnet.rescaled_forward(net, x, scale=scale), atol=1e-5)
    with pytest.raises(ValueError, match="unknown model"):
        attacks.attacked_model(net, "zeros", timesteps=2)


def test_chunks_are_hashed_and_checked(tmp_path):
    job = R.Job("t0", "apgd-ce", 0.05, 3, 2, block=0)
    st, digests = R.store(TINY, cache=tmp_path), {"decoders": "a" * 64}
    assert R.load_chunk(st, job, digests) is None
    R.save_chunk(st, job, digests, {"correct": [True, False]})
    assert R.load_chunk(st, job, digests) == {"correct": [True, False]}
    path = st.path(dataclasses.asdict(job), digests)
    assert json.loads(path.read_text())["git"] == weights.git_revision()  # which code computed the chunk
    assert R.load_chunk(st, dataclasses.replace(job, block=1), digests) is None  # another job: not this file
    assert R.load_chunk(st, job, {"decoders": "b" * 64}) is None  # other weights: not done
    doc = json.loads(path.read_text())
    doc["result"]["correct"][1] = True  # a hand-edited outcome
    path.write_text(json.dumps(doc))
    with pytest.raises(chunks.ChunkError, match="sha256"):
        R.load_chunk(st, job, digests)


def test_resaved_decoders_invalidate_the_cached_chunks(tiny_study, tmp_path, monkeypatch):
    """Issue 19 item 6: a retrain (decoders saved again, other bytes) leaves no job done."""
    import shutil
    data_dir = tmp_path / "data"
    shutil.copytree(R.data.DATA_DIR / "weights", data_dir / "weights")
    monkeypatch.setattr(R.data, "DATA_DIR", data_dir)
    R.compute(TINY, cache=tmp_path / "chunks", max_jobs=3, progress=False)
    n_jobs = len(R.jobs(TINY, 6))
    assert len(R._undone(TINY, tmp_path / "chunks", 6)) == n_jobs - 3
    decoders = R.models.feedback_weights_path("fmnist_vgg", seed=0)
    state = weights.load_weights(decoders)
    state = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state.items()}
    weights.save_weights(decoders, state, command="test: a retrain", seed=0)
    assert len(R._undone(TINY, tmp_path / "chunks", 6)) == n_jobs  # every old chunk is stale


@pytest.fixture
def tiny_study(tiny, monkeypatch):
    """The study's images and network replaced by the tiny ones: (net, x, y)."""
    net, x, y = tiny
    monkeypatch.setattr(R, "images", lambda c: (torch.arange(6), x, y))
    monkeypatch.setattr(R, "network", lambda c, device="cpu": net)
    return tiny


def test_compute_resumes_and_assembles(tiny_study, tmp_path, monkeypatch):
    net, x, y = tiny_study
    n_jobs = len(R.jobs(TINY, 6))
    assert R.compute(TINY, cache=tmp_path, max_jobs=3, shard=(1, 2), progress=False) == n_jobs - 3
    assert sorted(p.name.split(".")[0] for p in tmp_path.rglob("*.json")) == sorted(j.key.split(".")[0]
                                                                                  for j in R.jobs(TINY, 6)[1:6:2])
    with pytest.raises(ValueError, match="shard"):
        R.compute(TINY, cache=tmp_path, shard=(2, 2))
    with pytest.raises(RuntimeError, match="not done"):
        R.assemble(TINY, cache=tmp_path)
    assert R.compute(TINY, cache=tmp_path, progress=False) == 0
    monkeypatch.setattr(R, "run_job", lambda *a: pytest.fail("a finished job ran again"))
    assert R.compute(TINY, cache=tmp_path, progress=False) == 0
    result = R.assemble(TINY, cache=tmp_path)
    assert result["labels"] == y.tolist() and set(result["clean"]) == {"t0", "dynamics", *TINY.controls}
    run = result["runs"]["t0/apgd-ce/eps=0.2/3x2"]
    assert len(run["correct"]) == len(run["transfer"]) == 6  # two blocks (4 + 2) joined in order
    assert RR.robust(result, model="dynamics", eps=0.2).shape == (6,)


def _result(outcomes: dict, *, t0_transfer=None):
    """A study with hand-made outcomes {(model, attack, budget, restarts): list of bools} at eps 0.1."""
    runs = {}
    for (model, attack, budget, restarts), correct in outcomes.items():
        runs[f"{model}/{attack}/{budget}x{restarts}"] = {"model": model, "attack": attack, "eps": 0.1,
                                                          "budget": budget, "restarts": restarts, "correct": correct}
        if model == "t0":
            runs[f"{model}/{attack}/{budget}x{restarts}"]["transfer"] = t0_transfer
    return {"config": {"eps_sweep": [0.1], "eps_main": 0.1, "timesteps": 6, "controls": ["zero"]}, "runs": runs}


def test_worst_case_includes_transfer_and_convergence_flags():
    T, F = True, False
    r = _result({("t0", "apgd-ce", 50, 1): [T, T, F, F], ("t0", "apgd-ce", 100, 3): [T, F, F, F],
                 ("dynamics", "apgd-ce", 100, 3): [T, T, T, F], ("dynamics", "square", 5000, 1): [T, T, T, T],
                 ("zero", "apgd-ce", 100, 3): [F, T, F, F]}, t0_transfer=[T, T, F, T])
    assert RR.robust(r, model="dynamics", eps=0.1).tolist() == [T, T, F, F]  # transfer from t0 fools image 3
    assert RR.robust(r, model="t0", eps=0.1).tolist() == [T, F, F, F]
    rows = RR.convergence(r, tolerance=20.0)
    assert [(x["weak (%)"], x["strong (%)"], x["converged"]) for x in rows] == [(50.0, 25.0, False)]  # one pair: no worst-case row
    assert RR.convergence(r, tolerance=25.0)[0]["converged"]
    assert "NOT converged" in RR.convergence_lines(rows, tolerance=20.0)[0]
    (v,) = RR.timestep_family(r)  # dynamics [T, T, F, F] vs t0 [T, F, F, F]: n10 = 1, n01 = 0
    assert v.n == 4 and v.estimate == pytest.approx(25.0) and v.p == pytest.approx(1.0)
    assert v.effect == "withheld" and "dynamics: not checked (dynamics/apgd-ce, dynamics/square" in v.phrase
    assert "t0: not converged (50.0% at the weak budgets, 25.0% at the strong ones)" in v.phrase
    (c,) = RR.control_family(r)  # each on its own worst case: dynamics [T, T, F, F] vs zero [F, T, F, F]
    assert c.estimate == pytest.approx(25.0) and c.effect == "withheld" and c.p_holm is None
    assert c.phrase.startswith("no comparison: robust accuracy <= 50.0% (dynamics), <= 25.0% (zero)")


def test_verdicts_stand_only_on_converged_worst_cases():
    """Issue 19: a comparison is stated only when both models' worst cases converged over their whole suite."""
    T, F = True, False
    both = lambda m, weak, strong: {(m, a, b, r): v for a in ("apgd-ce", "apgd-dlr")
                                   for (b, r), v in (((50, 1), weak), ((100, 3), strong))}
    r = _result({**both("t0", [T, F, F, F], [T, F, F, F]), **both("dynamics", [T, T, T, F], [T, T, T, F]),
                 **both("zero", [F, T, F, T], [F, T, F, F])}, t0_transfer=[T, T, T, F])
    r["runs"] = {k: {**v, "transfer": [T, T, T, F]} if v["model"] == "t0" else v for k, v in r["runs"].items()}
    assert RR.suite_convergence(r, model="dynamics", eps=0.1, tolerance=1.0)[0]
    ok, why = RR.suite_convergence(r, model="zero", eps=0.1, tolerance=1.0)
    assert not ok and why == "zero: not converged (50.0% at the weak budgets, 25.0% at the strong ones)"
    (v,) = RR.timestep_family(r)
    assert not v.withheld and v.estimate == pytest.approx(50.0) and v.p_holm is not None
    (c,) = RR.control_family(r)
    assert c.withheld and "zero: not converged" in c.phrase
    assert "no comparison at eps = 0.1" in RR.summary([dataclasses.replace(v, withheld="x")], [c])


def test_convergence_compares_the_worst_cases_of_attacks_run_at_two_budgets():
    T, F = True, False
    r = _result({("t0", "apgd-ce", 50, 1): [T, T, T, F], ("t0", "apgd-ce", 100, 3): [T, T, F, F],
                 ("t0", "square", 1000, 1): [F, T, T, F], ("t0", "square", 5000, 1): [T, F, T, F],
                 ("t0", "autoattack", 0, 1): [F, F, F, F]})  # one budget only: not in the worst case
    rows = RR.convergence(r, tolerance=10.0)
    assert [x["attack"] for x in rows] == ["apgd-ce", "square", "worst case over apgd-ce, square"]
    worst = rows[-1]  # weak: [F, T, T, F] -> 50 %; strong: [T, F, F, F] -> 25 %
    assert (worst["weak (%)"], worst["strong (%)"], worst["converged"]) == (50.0, 25.0, False)
    assert RR.convergence(r, tolerance=25.0)[-1]["converged"]
    lines = RR.convergence_lines(rows, tolerance=10.0)
    assert len(lines) == 2 and "apgd-ce on t = 0 (backbone) has NOT converged" in lines[0]  # square: 50 % at both and lines[-1].startswith("The worst case over apgd-ce, square")
    assert RR.convergence_lines(RR.convergence(r, tolerance=25.0), tolerance=25.0)[-1].endswith(
        ": converged (tolerance 25 points).")


def test_proportion_interval_matches_statsmodels():
    proportion_confint = pytest.importorskip("statsmodels.stats.proportion").proportion_confint
    correct = torch.tensor([1] * 37 + [0] * 163)
    est, low, high = stats.proportion_interval(correct)
    ref = proportion_confint(37, 200, alpha=0.05, method="wilson")
    assert float(est) == pytest.approx(0.185) and (float(low), float(high)) == pytest.approx(ref, abs=1e-9)
    with pytest.raises(ValueError, match="empty"):
        stats.proportion_interval(torch.tensor([]))


def test_summary_names_gains_losses_and_controls():
    T, F = True, False
    r = _result({(m, "apgd-ce", b, k): v for b, k in ((50, 1), (100, 3)) for m, v in (
        ("t0", [F] * 40), ("dynamics", [T] * 20 + [F] * 20), ("zero", [T] * 20 + [F] * 20))}, t0_transfer=[T] * 40)
    timestep, control = RR.timestep_family(r), RR.control_family(r)  # every worst case converged (equal budgets)
    assert timestep[0].effect == "gain" and control[0].effect == "none"
    text = RR.summary(timestep, control)
    assert "a gain at eps = 0.1" in text and "no detectable advantage over (or no comparison with) zero feedback" in text


def test_study_loads_only_its_own_configuration(tmp_path):
    with pytest.raises(FileNotFoundError, match="robustness_study"):
        R.study(TINY, path=tmp_path / "absent.json")
    path = tmp_path / "study.json"
    weights.save_json_result(path, {"config": dataclasses.asdict(TINY), "runs": {}}, command="test", seed=0)
    assert R.study(TINY, path=path)["runs"] == {}
    with pytest.raises(ValueError, match="RECOMPUTE"):
        R.study(dataclasses.replace(TINY, steps=5), path=path)


def _chapter_config(monkeypatch) -> R.Config:
    """The Config that chapter 6 builds at its full parameters: its parameters and setup cells, executed."""
    import pathlib
    monkeypatch.delenv("PCNET_SMOKE", raising=False)
    nb = json.loads((pathlib.Path(__file__).parents[1] / "book" / "06_adversarial.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    params = ["".join(c["source"]) for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    setup = ["".join(c["source"]) for c in code if "CONFIG = robustness_study.Config(" in "".join(c["source"])]
    assert len(params) == 1 and len(setup) == 1
    namespace = {"os": __import__("os")}
    threads = torch.get_num_threads()
    try:
        exec(params[0] + "\n" + setup[0], namespace)
    finally:
        torch.set_num_threads(threads)
    return namespace["CONFIG"]


def test_chapter_full_parameters_are_the_cli_study_and_load_the_committed_result(monkeypatch):
    """`make book` runs chapter 6 at full parameters: they must be the CLI's study (what `make data` computes), and
    the committed data/results/ch6_robustness.json must load under them (sha256 checked)."""
    config = _chapter_config(monkeypatch)
    assert config == R.Config() and config.digest() == R.Config().digest()
    result = R.study(config)
    assert len(result["labels"]) == 10 * config.per_class >= 200
    assert {run["eps"] for run in result["runs"].values()} == set(config.eps_sweep)


def test_tuned_study_takes_chapter_4s_values_at_the_main_eps():
    """--tuned: chapter 4's committed tuned values at the T they were selected with (the same T at evaluation),
    main eps only: APGD-CE/DLR at two budgets against t = 0, the dynamics and all four controls; Square at two
    budgets and the BPDA variants against the dynamics; no AutoAttack."""
    record = weights.load_json_result(R.TUNED_SOURCE)
    c = R.Config.tuned()
    assert (c.beta, c.lam, c.alpha) == tuple(record["recommended"][k] for k in ("beta", "lam", "alpha"))
    assert c.timesteps == record["grid_search"]["timesteps"] and c.eps_sweep == (c.eps_main,)
    runs = {j.run for j in R.jobs(c, 200)}
    assert not any("autoattack" in r for r in runs)
    assert {"dynamics/square/eps=0.02/500x1", "dynamics/square/eps=0.02/1000x1", "t0/square/eps=0.02/1000x1",
            "bpda-feedforward/apgd-ce/eps=0.02/100x1", "bpda-last-k/apgd-ce/eps=0.02/100x1",
            "bpda-detached-error/apgd-ce/eps=0.02/100x1"} <= runs
    assert {f"{m}/apgd-{l}/eps=0.02/100x3" for m in ("t0", "dynamics", *c.controls) for l in ("ce", "dlr")} <= runs
    assert {f"{m}/apgd-ce/eps=0.02/50x1" for m in ("t0", "dynamics")} <= runs
    assert set(c.controls) == {"zero", "shuffled", "mean", "rescale"} and c.digest() != R.Config().digest()
    committed = weights.load_json_result(R.RESULT_PATH)["config"]
    assert R._as_config(committed) == R.Config()  # the committed paper-value study still loads as the default
    with pytest.raises(ValueError, match="both 0"):
        R.Config(queries=0)


def test_tuned_smoke_cli_end_to_end(tmp_path):
    out = tmp_path / "tuned.json"
    assert R.main(["--tuned", "--smoke", "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    result = weights.load_json_result(out)
    c = R.Config.tuned(smoke=True)
    assert R._as_config(result["config"]) == c and set(result["clean"]) == {"t0", "dynamics", *c.controls}
    lines = RR.conclusion_lines(result, timestep=RR.timestep_family(result), control=RR.control_family(result),
                                clean=RR.clean_family(result), tolerance=1.0)
    assert f"Square {c.queries} queries" in lines[0] and f"alpha = {c.alpha:g}" in lines[0]
    assert "no Square" in RR.conclusion_lines({**result, "config": {**result["config"], "queries": 0}},
                                              timestep=[], control=[], clean=[], tolerance=1.0)[0]
    assert len(RR.control_family(result)) == 4 and len(RR.timestep_family(result)) == 1


@pytest.mark.parametrize("module", ["robustness_study", "dynamics_runs"])
def test_smoke_cli_needs_a_scratch_output(module, capsys):
    """A tiny smoke study must never overwrite the committed result (the default output)."""
    import importlib
    cli = importlib.import_module(f"pcnet.experiments.{module}")
    before = {p: p.read_bytes() for p in (R.RESULT_PATH, R.TUNED_SOURCE)}
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--smoke"])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err
    assert all(p.read_bytes() == b for p, b in before.items())


def test_committed_tuned_study_loads_under_the_chapters_config():
    """Chapter 6 loads data/results/ch6_robustness_tuned.json with Config.tuned() (sha256 and config checked); its
    every job is there, and the dynamics' worst case includes the Square, BPDA and transfer attacks."""
    config = R.Config.tuned()
    result = R.study(config, path=R.TUNED_RESULT_PATH)
    assert len(result["labels"]) == 200 and {r["eps"] for r in result["runs"].values()} == {config.eps_main}
    assert set(result["runs"]) == {j.run for j in R.jobs(config, 200)}
    outcomes = RR.attack_outcomes(result, model="dynamics", eps=config.eps_main)
    assert any("square" in k for k in outcomes) and any(k.startswith("bpda-") for k in outcomes)
    assert any(k.startswith("transfer from") for k in outcomes)


def test_masking_line_flags_a_surrogate_that_beats_the_true_gradient():
    T, F = True, False
    dyn = {("t0", "apgd-ce", 100, 3): [F, F, F, F], ("dynamics", "apgd-ce", 100, 3): [T, T, T, F],
           ("dynamics", "square", 1000, 1): [F, F, F, F]}  # Square is not a true-gradient attack: ignored here
    masked = RR.masking_line(_result({**dyn, ("bpda-last-k", "apgd-ce", 100, 1): [T, F, F, F]},
                                     t0_transfer=[T, T, T, T]))
    assert "bpda-last-k/apgd-ce/100x1 leaves 25.0% robust" in masked and "dynamics/apgd-ce/100x3: 75.0%" in masked
    assert "partly masked" in masked
    clean = RR.masking_line(_result({**dyn, ("bpda-last-k", "apgd-ce", 100, 1): [T, T, T, T]},
                                    t0_transfer=[T, T, T, F]))
    assert "no sign of gradient masking" in clean and "75.0% vs" in clean
    assert "not checked" in RR.masking_line(_result({("dynamics", "apgd-ce", 100, 3): [T, F, F, F]}))


def test_chunks_record_the_revision_the_worker_started_with(tiny_study, tmp_path, monkeypatch):
    """HEAD can move while a long worker runs: every chunk it writes names the revision it started with."""
    calls = iter(f"rev{i}" for i in range(1000))
    monkeypatch.setattr(R.weights, "git_revision", lambda: next(calls))
    R.compute(TINY, cache=tmp_path, max_jobs=4, progress=False)
    assert {json.loads(p.read_text())["git"] for p in tmp_path.rglob("*.json")} == {"rev0"}


def test_withheld_verdicts_take_no_share_of_holm():
    from pcnet.experiments.verdicts import Verdict, holm_family
    v = lambda p, why="": Verdict("c", 10, 1.0, 0.0, 2.0, 1.0, "t", p, withheld=why)
    a, b, c = holm_family([v(0.01), v(0.001, "not converged"), v(0.04)])
    assert (a.p_holm, b.p_holm, c.p_holm) == (pytest.approx(0.02), None, pytest.approx(0.04))
    assert b.effect == "withheld" and b.phrase == "no comparison: not converged" and a.effect == "gain"


def test_suite_gives_every_model_the_same_attacks_at_two_budgets_on_fresh_images():
    """Issue 19: one shared suite (APGD-CE/DLR 100x3, Square 5,000, AutoAttack; BPDA on the iterative models) at
    the suite's budget and doubled, T = 10, at the main eps, on 200 images none of which the first study used."""
    c = R.Config.suite_of(backbone_seed=2)
    assert (c.timesteps, c.eps_sweep, c.backbone_seed, c.autoattack) == (10, (0.02,), 2, True)
    runs = {(m, a, b, k) for m, a, _, b, k in R._runs(c)}
    for m in ("t0", "dynamics", "zero", "shuffled", "mean", "rescale"):
        assert {(m, a, b, 3) for a in ("apgd-ce", "apgd-dlr") for b in (100, 200)} <= runs
        assert {(m, "square", 5000, 1), (m, "square", 10000, 1), (m, "autoattack", 0, 1)} <= runs
    for m in ("bpda-last-k", "bpda-last-k@zero", "bpda-feedforward@shuffled", "bpda-detached-error@mean"):
        assert {(m, "apgd-ce", 100, 3), (m, "apgd-ce", 200, 3)} <= runs
    assert not any(m.endswith("@rescale") for m, *_ in runs)
    idx, _, y = R.images(c)
    first, _, _ = R.images(R.Config())
    assert len(idx) == 200 and not set(idx.tolist()) & set(first.tolist()) and torch.bincount(y).tolist() == [20] * 10
    assert R.images(R.Config())[0].tolist() == first.tolist()  # the committed study's images are unchanged
    assert R._as_config(weights.load_json_result(R.RESULT_PATH)["config"]) == R.Config()


def test_bpda_on_a_control_keeps_the_control_s_value(tiny):
    net, x, _ = tiny
    zero = attacks.attacked_model(net, "zero", timesteps=2)
    bpda = attacks.attacked_model(net, "bpda-last-k@zero", timesteps=2, last_k=1)
    mean = attacks.attacked_model(net, "mean", timesteps=2)
    bpda_mean = attacks.attacked_model(net, "bpda-feedforward@mean", timesteps=2)
    with torch.no_grad():
        assert torch.allclose(bpda(x), zero(x), atol=1e-6) and torch.allclose(bpda_mean(x), mean(x), atol=1e-6)
    assert not attacks.is_model("bpda-last-k@rescale") and attacks.is_model("bpda-last-k@shuffled")
    with pytest.raises(ValueError, match="unknown models"):
        R.Config(bpda=("bpda-last-k@rescale",))


def test_autoattack_counts_in_both_budgets_of_the_convergence_check():
    T, F = True, False
    r = _result({**{(m, "apgd-ce", b, k): v for b, k in ((100, 3), (200, 3))
                    for m, v in (("t0", [T, T, F, F]), ("dynamics", [T, T, T, F]))},
                 ("t0", "autoattack", 0, 1): [T, F, F, F]}, t0_transfer=[T, T, T, T])
    ok, why = RR.suite_convergence(r, model="t0", eps=0.1, tolerance=1.0)
    assert ok and why == "t0: converged (25.0% at the weak budgets, 25.0% at the strong ones)"
