"""pcnet.experiments.corruption_study / corruption_report: storage, ordering, resumable chunks, the two summaries."""
import json
import pathlib

import pytest
import torch

from pcnet.experiments import corruption_report as R
from pcnet.experiments import corruption_study as S
from pcnet.experiments import metrics


def test_bits_round_trip_exactly():
    g = torch.Generator().manual_seed(0)
    for shape in [(3,), (2, 5, 7), (11, 1, 5, 13)]:
        x = torch.rand(shape, generator=g) > 0.5
        doc = json.loads(json.dumps(S.encode_bits(x)))
        assert torch.equal(S.decode_bits(doc), x)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="per_class"):
        S.StudyConfig(per_class=0)
    with pytest.raises(ValueError, match="batch"):
        S.StudyConfig(batch=1)
    with pytest.raises(ValueError, match="names"):
        S.StudyConfig(names=("rain",))


def test_in_order_returns_input_order_and_batches_are_shuffled():
    labels = torch.arange(10) % 3
    images = labels.float()[:, None, None, None].expand(10, 1, 2, 2).clone()  # (n, 1, 2, 2) encodes the label
    seen = []

    def predict(x):  # correct iff the image encodes its label; records batch composition
        seen.append(x[:, 0, 0, 0].tolist())
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()  # (B, K)

    order = S.random_order(10, seed=0)
    correct = S._in_order(predict, images, labels, order=order, batch=4)
    assert correct.shape == (1, 10) and bool(correct.all())
    assert seen[0] == labels[order[:4]].float().tolist()  # batches follow the random order
    wrong = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])  # the last label differs from the image
    assert S._in_order(predict, images, wrong, order=order, batch=4)[0].tolist() == [True] * 9 + [False]


def test_summaries_by_hand_and_against_metrics():
    # 2 corruptions, 2 images; wrong-severity counts per image
    err = torch.tensor([[1.0, 3.0], [0.0, 2.0]])  # (C, n)
    ref = torch.tensor([[2.0, 2.0], [4.0, 4.0]])
    assert float(R.mce_ratio(err, ref)) == pytest.approx((4 / 4 + 2 / 8) / 2)
    assert float(R.ratio_of_means(err, ref)) == pytest.approx(6 / 12)
    g = torch.Generator().manual_seed(1)
    correct = torch.rand(4, 3, 5, 50, generator=g) > 0.4  # (T+1, C, S, n)
    acc = correct.float().mean(-1).permute(1, 2, 0)  # (C, S, T+1) as metrics expects
    e = R.errors(correct)  # (T+1, C, n)
    assert torch.allclose(R.mce_ratio(e, e[0]), metrics.normalised_ce(acc).mean(0).double())
    assert torch.allclose(R.ratio_of_means(e, e[0]), metrics.normalised_mce(acc).double())


def _fake_study(n=400, seed=0):
    """A study whose paper dynamics are wrong on fewer images at T than at t = 0; all else equal to t = 0."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(2, 5, n, generator=g) > 0.3  # (C, S, n)
    better = base | (torch.rand(2, 5, n, generator=g) > 0.7)
    dyn = torch.stack([base, base, better])  # (T+1, C, S, n)
    same = torch.stack([base, base, base])
    correct = {"paper: dynamics": dyn, "paper: zero": same, "paper: shuffled": same, "paper: mean": same,
               "paper: rescale": base[None], "BN adaptation": base[None], "TENT": base[None]}
    clean = {k: v[:, 0, 0] for k, v in correct.items()}
    return {"correct": correct, "clean": clean, "value_sets": {"paper": S.PAPER}, "methods": list(correct),
            "config": {"names": ["a", "b"]}, "severities": [1, 2, 3, 4, 5]}


def test_families_find_a_real_gain_and_no_effect_where_there_is_none():
    study = _fake_study()
    fam = R.summary_family(study, summary="mCE", n_boot=300)
    dyn = R.find(fam, "mCE: paper: dynamics")
    expected = float(R.mce_ratio(R.errors(study["correct"]["paper: dynamics"])[-1],
                                 R.errors(study["correct"]["paper: dynamics"])[0]))
    assert dyn.estimate == pytest.approx(expected) and dyn.effect == "gain" and dyn.p_holm is not None
    assert R.find(fam, "mCE: paper: zero").effect == "none"
    assert R.find(fam, "mCE: paper: dynamics - paper: zero").effect == "gain"
    assert R.find(fam, "mCE: TENT - BN adaptation").estimate == 0
    cells = R.cell_family(study, value_set="paper")
    summary = R.cell_summary(cells)
    assert summary["cells"] == 10 and summary["gain"] == 10 and summary["n"] == 400
    clean = R.clean_family(study)
    assert R.find(clean, "clean: paper: zero - backbone").estimate == 0
    est, low, high = R.curve(study, "paper: dynamics", summary="ratio of means", n_boot=200)
    assert est.shape == (3,) and est[0] == 1 and bool((low[-1] < est[-1]) & (est[-1] < high[-1]))


def test_read_tuned(tmp_path):
    from pcnet.experiments.weights import save_json_result
    good = tmp_path / "tuned.json"
    save_json_result(good, {"recommended": {"beta": 0.6, "lam": 0.3, "alpha": 0.01}}, command="test", seed=0)
    values, sha = S.read_tuned(good)
    assert values == {"beta": 0.6, "lam": 0.3, "alpha": 0.01} and len(sha) == 64
    bad = tmp_path / "bad.json"
    save_json_result(bad, {"grid": []}, command="test", seed=0)
    with pytest.raises(ValueError, match="recommended"):
        S.read_tuned(bad)


def test_study_runs_resumes_and_shares_the_backbone(tmp_path, monkeypatch):
    pytest.importorskip("cv2")
    config = S.StudyConfig(per_class=1, timesteps=2, batch=5, tta_batch=4, names=("brightness",))
    values = {"paper": S.PAPER, "tuned": {"beta": 0.6, "lam": 0.3, "alpha": 0.01}}
    try:
        result = S.run_study(config, values, chunk_dir=tmp_path, progress=False)
    except FileNotFoundError as err:
        pytest.skip(f"data unavailable: {err}")
    study = S.load_study(json.loads(json.dumps(result)))
    dyn = study["correct"]["paper: dynamics"]
    assert dyn.shape == (3, 1, 5, 10) and study["correct"]["TENT"].shape == (1, 1, 5, 10)
    for m in ("paper: zero", "paper: shuffled", "paper: mean", "tuned: dynamics"):
        assert torch.equal(study["correct"][m][0], dyn[0])  # every run starts from the same feedforward pass
    assert study["clean"]["paper: dynamics"].shape == (3, 10)
    monkeypatch.setattr(S, "_compute_chunk", lambda *a, **k: pytest.fail("a finished chunk was recomputed"))
    again = S.run_study(config, values, chunk_dir=tmp_path, progress=False)
    assert again["correct"] == result["correct"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_study_on_cuda_matches_cpu(tmp_path):
    pytest.importorskip("cv2")
    config = S.StudyConfig(per_class=2, timesteps=2, batch=10, tta_batch=8, names=("brightness",))
    values = {"paper": S.PAPER}
    cpu = S.load_study(S.run_study(config, values, chunk_dir=tmp_path / "cpu", progress=False))
    gpu = S.load_study(S.run_study(config, values, chunk_dir=tmp_path / "gpu", progress=False, device="cuda"))
    for m, correct in cpu["correct"].items():  # argmax may flip only on near-ties (float rounding differs)
        assert (correct == gpu["correct"][m]).float().mean() >= 0.9, m


def test_figures_fit_the_page():
    import matplotlib
    matplotlib.use("Agg")
    from pcnet.experiments import corruption_figures as F

    study = _fake_study(n=60)
    fam = R.summary_family(study, summary="mCE", n_boot=50)
    figs = [F.plot_curves(study, n_boot=50), F.plot_per_corruption(study), F.plot_tradeoff(fam, R.clean_family(study))]
    for fig in figs:
        assert fig.get_size_inches()[0] <= 7.5
        rows = {round(ax.get_position().y0, 2) for ax in fig.axes if ax.get_label() != "<colorbar>"}
        assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) <= 3 * len(rows)


def test_committed_names_the_command_and_rejects_other_settings(tmp_path):
    from pcnet.experiments.weights import save_json_result
    config = S.StudyConfig(per_class=1, names=("brightness",))
    with pytest.raises(FileNotFoundError, match="corruption_study"):
        S.committed(config, {"paper": S.PAPER}, path=tmp_path / "missing.json")
    path = tmp_path / "study.json"
    body = {"config": {**S.dataclasses.asdict(config), "names": ["brightness"]}, "value_sets": {"paper": S.PAPER}}
    save_json_result(path, body, command="test", seed=0)
    assert S.committed(config, {"paper": S.PAPER}, path=path) == body
    with pytest.raises(ValueError, match="timesteps"):
        S.committed(S.StudyConfig(per_class=1, timesteps=3, names=("brightness",)), {"paper": S.PAPER}, path=path)
    with pytest.raises(ValueError, match="tuned values"):
        S.committed(config, {"paper": S.PAPER, "tuned": S.PAPER}, path=path)


def test_best_method_needs_five_batch_orders():
    """Issue 19 item 8: a TTA ranking from one batch order is no "best method" (batch-order variance unmeasured)."""
    from pcnet.experiments.verdicts import Verdict
    v = lambda name, est, p: Verdict(name, 100, est, est - 0.1, est + 0.1, 0.1, "t", p, p_holm=p)
    fam = [v("mCE: TENT", 0.50, 0.0), v("mCE: BN adaptation", 0.51, 0.0), v("mCE: TENT - BN adaptation", -0.3, 0.01)]
    one = R.best_method(fam, summary="mCE")
    assert "TENT, ranks first on this batch order" in one and "no best-method claim" in one and "is the best" not in one
    assert "TENT, is the best method (over 5 batch orders)" in R.best_method(fam, summary="mCE", batch_orders=5)
    fam[-1] = v("mCE: TENT - BN adaptation", -0.3, 0.2)
    assert "is not distinguishable from the runner-up" in R.best_method(fam, summary="mCE")


def test_partial_study_never_writes_the_committed_file(tmp_path):
    """Issue 20: `--names gaussian_noise --per-class 1` without --out overwrote data/results/ch5_corruptions.json."""
    before = S.RESULT_PATH.read_bytes()
    for argv in (["--names", "gaussian_noise", "--per-class", "1"],
                 ["--names", "gaussian_noise", "--per-class", "1", "--out", str(S.RESULT_PATH)],
                 ["--out", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            S.main(argv)
        assert exit_info.value.code == 2
    assert S.RESULT_PATH.read_bytes() == before
    assert S.committed_path(S.StudyConfig(backbone_seed=1), ("paper",)).name == "ch5_corruptions_backbone1.json"
    assert S.committed_path(S.StudyConfig(per_class=1), ("paper", "tuned")) is None


def test_only_committed_configurations_default_to_the_committed_chunk_folder():
    """A smoke chapter 5 (run_study without chunk_dir) wrote tiny chunks into data/chunks/ch5_corruptions."""
    paper = {"paper": S.PAPER}
    assert S.store(S.StudyConfig(backbone_seed=1), paper).folder == S.CHUNK_DIR
    assert S.store(S.StudyConfig(backbone_seed=1, names=("fog",)), paper).folder == S.CHUNK_DIR  # a share of the work
    assert S.store(S.StudyConfig(per_class=3), paper).folder == S.DATA_DIR / "cache" / "ch5_chunks"


def test_a_worker_with_part_of_the_corruptions_shares_the_committed_chunk_folder(tmp_path, monkeypatch):
    """Two workers split a committed study with --names and scratch --out files: their chunks (keyed without the
    list of corruptions) must land in the committed folder, where the full command then finds them; a smaller
    configuration still keeps its chunks beside its --out."""
    seen = []

    def fake_run_study(config, value_sets, *, chunk_dir, **_):
        seen.append(pathlib.Path(chunk_dir))
        raise SystemExit(0)  # stop before any compute

    monkeypatch.setattr(S, "run_study", fake_run_study)
    for argv in (["--backbone-seed", "1", "--names", "fog", "snow", "--out", str(tmp_path / "w1.json")],
                 ["--backbone-seed", "1", "--names", "fog", "--per-class", "3", "--out", str(tmp_path / "w2.json")]):
        with pytest.raises(SystemExit):
            S.main(argv)
    assert seen == [S.CHUNK_DIR, tmp_path / "w2.json.chunks"]
