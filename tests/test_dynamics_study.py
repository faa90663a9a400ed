"""Tests for chapter 4's experiment module (pcnet.experiments.dynamics_study) and its chunked CLI."""
import json

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import pcnet
from pcnet.experiments import chunks, dynamics_runs as R
from pcnet.experiments import dynamics_study as S
from pcnet.experiments import evaluate, verdicts
from test_tuning import mixing_net


def test_pack_round_trips_and_checks_length():
    x = torch.tensor([True, False, True, True, False, False, True, False, True, True])  # 10 bits -> 2 bytes
    assert torch.equal(S.unpack(S.pack(x), 10), x)
    with pytest.raises(ValueError, match="expected 17"):
        S.unpack(S.pack(x), 17)


def test_conditions_corruptions_and_labels():
    assert S.conditions(gaussian=[0.1], salt_pepper=[0.05]) == [("clean", 0.0), ("gaussian", 0.1),
                                                                ("salt_pepper", 0.05)]
    assert S.corruption("clean", 0.0) is None and S.corruption("gaussian", 0.0) is None
    x = torch.rand(3, 1, 4, 4)
    expected = evaluate.gaussian_noise(x, sigma=0.2, generator=5)
    assert torch.equal(S.corruption("gaussian", 0.2)(x, generator=5), expected)
    assert S.label(("salt_pepper", 0.05)) == "salt & pepper 0.05"
    with pytest.raises(ValueError, match="unknown corruption kind"):
        S.corruption("blur", 1.0)
    assert S.noise_seed(3, replicate=0) == 3 and S.noise_seed(3, replicate=1) != S.noise_seed(3, replicate=2)


def test_shuffled_subset_is_a_fixed_random_order():
    data = TensorDataset(torch.arange(20.0).reshape(20, 1), torch.arange(20))
    a, b = S.shuffled_subset(data, 8, seed=1), S.shuffled_subset(data, 8, seed=1)
    assert torch.equal(a.tensors[1], b.tensors[1]) and len(set(a.tensors[1].tolist())) == 8
    assert not torch.equal(a.tensors[1], torch.arange(8))
    assert torch.equal(a.tensors[0][:, 0].long(), a.tensors[1])  # images stay with their labels
    with pytest.raises(ValueError, match="n must lie"):
        S.shuffled_subset(data, 21)


def test_contrast_family_matches_paired_proportions_and_applies_holm():
    g = torch.Generator().manual_seed(0)
    t0, tT, zero = (torch.rand(300, generator=g) < p for p in (0.6, 0.7, 0.65))
    runs = {"prediction": {"t0": t0, "T": tT}, "zero": {"T": zero}}
    fam = S.family({"clean": runs})
    assert [v.contrast for v in fam] == ["clean: dynamics t=T − t=0", "clean: dynamics − zero-prediction (t=T)"]
    ref = verdicts.paired_proportions(tT, zero, contrast="x")
    assert fam[1].estimate == pytest.approx(ref.estimate) and fam[1].p == pytest.approx(ref.p)
    assert all(v.p_holm >= v.p for v in fam)
    assert list(S.verdict_table(fam).index) == [v.contrast for v in fam]


def test_grid_points_best_point_and_edges():
    pts = S.grid_points(beta=[0.8, 1.0], lam=[0.0, 0.1], alpha=[0.01])
    assert pts == [{"beta": 0.8, "lam": 0.0, "alpha": 0.01}, {"beta": 0.8, "lam": 0.1, "alpha": 0.01},
                   {"beta": 1.0, "lam": 0.0, "alpha": 0.01}]  # beta 1.0 + lam 0.1 > 1 is left out
    rows = [{"alpha": a, "score": s} for a, s in ((0.1, 0.5), (1.0, 0.7), (10.0, 0.7))]
    assert S.best_point(rows)["alpha"] == 1.0  # the first of equal scores
    assert S.on_edge(rows, "alpha") is None
    assert S.on_edge(rows + [{"alpha": 100.0, "score": 0.9}], "alpha") == "high"


def threshold_data(n=100):
    """Inputs x in [0, 1] labelled class 0 when x > 0.25: the mixing net (head: class 0 when its top state
    exceeds 0.5, state = s1 * s2 * x under per-layer rescale s) is right everywhere only for s1 * s2 = 2."""
    x = torch.linspace(0, 1, n)  # (n,)
    y = (x <= 0.25).long()
    return TensorDataset(x.reshape(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(), y)


def test_tune_rescale_finds_the_known_factor():
    net = mixing_net()
    factors, acc = S.tune_rescale(net, threshold_data(), scales=[0.5, 1.0, 2.0], batch_size=50)
    assert factors == [2.0, 1.0] and acc == 1.0


def test_correct_under_rescale_equals_the_fixed_point_forward_and_rejects_unknown_controls():
    net, data = mixing_net(beta=0.6, lam=0.3), threshold_data()
    scale = [0.6 / 0.9, 1.0]  # beta / (beta + lam); the top PCoder has lam = 0
    assert S.fixed_point_scales(net) == pytest.approx(scale)
    expected = evaluate.correct_of(lambda x: pcnet.rescaled_forward(net, x, scale=scale), data, progress=False)
    rescaled = S.correct_under(net, data, control="rescale", timesteps=3, batch_size=20)
    assert rescaled.shape == (4, 100) and all(torch.equal(row, expected) for row in rescaled)  # same shape as ...
    assert S.correct_under(net, data, control="zero", timesteps=3, batch_size=20).shape == (4, 100)  # ... feedback
    result = evaluate.evaluate_dynamics(net, data, timesteps=2, feedback="rescale", batch_size=30, progress=False)
    assert result.correct.shape == (3, 100) and torch.equal(result.correct[-1], expected)
    assert result.accuracy.tolist() == [expected.float().mean().item()] * 3
    with pytest.raises(ValueError, match=r"rescale control is one feedforward pass .*drop record=\('errors',\)"):
        evaluate.evaluate_dynamics(net, data, timesteps=2, feedback="rescale", record=("errors",), progress=False)
    with pytest.raises(ValueError, match="control must be one of"):
        S.correct_under(net, data, control="noise", timesteps=3, batch_size=20)


def test_study_chunks_of_the_rescale_control_keep_their_format(monkeypatch):
    """dynamics_runs._run stores the rescale control as one packed outcome and one accuracy, as before the
    (T+1, n) shape; a feedback control as t0, T and an accuracy per timestep."""
    import types

    from pcnet.experiments import dynamics_runs as runs

    net, data = mixing_net(beta=0.6, lam=0.3), threshold_data()
    monkeypatch.setattr(runs, "_net", lambda values, **options: net)
    monkeypatch.setattr(runs, "_test", lambda cfg, cond, seed: data)
    cfg = types.SimpleNamespace(timesteps=3, batch_size=20)
    expected = evaluate.correct_of(lambda x: pcnet.rescaled_forward(net, x, scale=[0.6 / 0.9, 1.0]), data,
                                   progress=False)
    assert runs._run(cfg, {}, None, "rescale") == {"T": S.pack(expected), "accuracy": expected.float().mean().item()}
    zero = runs._run(cfg, {}, None, "zero")
    assert set(zero) == {"t0", "T", "accuracy"} and len(zero["accuracy"]) == 4


def test_state_distances_per_image_average_to_the_evaluate_helper():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    net = pcnet.predify(model, layers=["1", "3"], input_shape=(1, 6, 6), beta=0.8, lam=0.1, alpha=0.01)
    clean = torch.rand(5, 1, 6, 6)
    noisy = evaluate.gaussian_noise(clean, sigma=0.3, generator=1)
    d = S.state_distances(net, clean, noisy, timesteps=3)  # (T+1, N, B)
    assert d.shape == (4, 2, 5)
    ref = evaluate.state_distance_over_time(net, clean, noisy, timesteps=3)  # (T+1, N) mean over images
    assert torch.allclose(d.mean(-1), ref, atol=1e-6)
    assert S.state_distances(net, clean, clean, timesteps=2).abs().max() < 1e-5


def test_chunks_are_resumed_and_damaged_ones_refused(tmp_path):
    calls = []

    def thunk():
        calls.append(1)
        return {"value": len(calls)}

    st = R.store(R.SMOKE, tmp_path)
    first = R._chunk(st, "run/a", None, thunk)
    assert R._chunk(st, "run/a", None, thunk)["result"] == first["result"] == {"value": 1} and len(calls) == 1
    assert R._chunk(st, "run/a", {"beta": 0.4}, thunk)["result"] == {"value": 2}  # other tuned values: another chunk
    path = st.path({"chunk": "run/a", "tuned": None}, R._inputs("run/a"))
    record = json.loads(path.read_text())
    record["result"]["value"] = 99  # edited by hand: the hash no longer matches
    path.write_text(json.dumps(record))
    with pytest.raises(chunks.ChunkError, match="sha256"):
        R._chunk(st, "run/a", None, thunk)


def test_chunk_inputs_are_the_backbone_the_chunk_runs_on():
    assert R._backbone_of("run/paper/2/gaussian-0.1/zero") == 2 and R._backbone_of("grid") == 0
    assert R._inputs("run/paper/1/gaussian-0.1/zero")["backbone"] != R._inputs("grid")["backbone"]


def test_plan_orders_the_main_contrasts_first_and_adds_tuned_chunks_once_known():
    keys = [k for k, _ in R.plan(R.SMOKE, None)]
    assert keys[0] == "grid" and keys[1] == "run/paper/0/clean-0/prediction"
    assert not any(k.startswith("run/tuned") for k in keys)
    tuned = [k for k, _ in R.plan(R.SMOKE, {"beta": 0.8, "lam": 0.0, "alpha": 1.0})]
    assert "run/tuned/0/gaussian-0.1/shuffled" in tuned and tuned[-1] == "states"


def test_backbone_seed_file_names_keep_seed_zero_names(data_dir):
    from pcnet.experiments import models

    assert models.reference_weights_path("fmnist_vgg").name == "fmnist_vgg.pt"
    assert models.reference_weights_path("fmnist_vgg", backbone_seed=1).name == "fmnist_vgg_seed1.pt"
    assert models.feedback_weights_path("fmnist_vgg", seed=0).name == "fmnist_vgg_feedback_seed0.pt"
    assert models.feedback_weights_path("fmnist_vgg", seed=2, backbone_seed=1).name == \
        "fmnist_vgg_seed1_feedback_seed2.pt"
    with pytest.raises(ValueError, match="backbone_seed must be an int >= 0"):
        models.reference_weights_path("fmnist_vgg", backbone_seed=-1)
    with pytest.raises(FileNotFoundError, match="--seed 3"):
        models.load_reference_backbone(backbone_seed=3)


def fake_result(per_seed):
    """A result with only the replicate chunks: per_seed[s] = (t0, T, zero_T) bool lists over the same n images."""
    from pcnet.experiments import dynamics_report as rep

    n = len(per_seed[0][0])
    chunks = {}
    for s, (t0, tT, zero) in enumerate(per_seed):
        key = f"run/paper/{s}/{rep.cond_key(('gaussian', 0.1))}"
        chunks[key + "/prediction"] = {"t0": S.pack(torch.tensor(t0)), "T": S.pack(torch.tensor(tT))}
        chunks[key + "/zero"] = {"t0": S.pack(torch.tensor(t0)), "T": S.pack(torch.tensor(zero))}
    return {"config": {"n_test": n, "main_sigma": 0.1, "backbone_seeds": list(range(len(per_seed)))},
            "chunks": chunks}


def test_replicate_table_gives_each_backbone_and_the_spread():
    from pcnet.experiments import dynamics_report as rep

    n = 10
    seed0 = ([False] * n, [True] * 2 + [False] * 8, [False] * n)  # +20 points over t=0 and over zero
    seed1 = ([False] * n, [True] * 4 + [False] * 6, [True] + [False] * 9)  # +40 over t=0, +30 over zero
    table = rep.replicate_table(fake_result([seed0, seed1]))
    gains = table[(table.contrast == "dynamics t=T − t=0") & table["backbone seed"].isin([0, 1])]
    assert [row.startswith(v) for row, v in zip(gains["estimate [interval]"], ("+20.00", "+40.00"))] == [True, True]
    spread = table[(table["backbone seed"] == "spread (max − min)")]["estimate [interval]"].tolist()
    assert spread == ["20.00", "10.00"]


def test_compute_with_only_runs_just_the_selected_chunks(tmp_path, monkeypatch):
    done = []

    def thunk(key):
        done.append(key)
        return {"best": {"beta": 1.0}} if key == "grid" else {"key": key}

    def fake_plan(cfg, tuned):
        keys = ["grid", "run/paper/0/a", "run/paper/1/a"] if tuned is None else ["run/tuned/0/a"]
        return [(k, lambda k=k: thunk(k)) for k in keys]

    monkeypatch.setattr(R, "plan", fake_plan)
    assert R.compute(R.SMOKE, cache=tmp_path, only="run/paper/1", progress=False) is None
    assert done == ["run/paper/1/a"]  # no grid cached yet -> the tuned chunks are not reached either
    result = R.compute(R.SMOKE, cache=tmp_path, progress=False)
    assert sorted(result["chunks"]) == ["grid", "run/paper/0/a", "run/paper/1/a", "run/tuned/0/a"]
    assert done == ["run/paper/1/a", "grid", "run/paper/0/a", "run/tuned/0/a"]  # the first chunk was resumed
