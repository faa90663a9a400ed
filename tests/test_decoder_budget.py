"""The decoder-budget check (pcnet.experiments.decoder_budget): the CLI end to end at smoke size on real
Fashion-MNIST, its verdict family on hand-made outcomes, and the committed result against chapter 4's."""
import json

import pytest
import torch

from pcnet.experiments import decoder_budget as D
from pcnet.experiments import dynamics_runs
from pcnet.experiments import dynamics_study as study
from pcnet.experiments import train, weights


def test_smoke_cli_trains_saves_and_reruns_without_training(tmp_path, monkeypatch):
    D.main(["--smoke", "--out", str(tmp_path)])
    result = weights.load_json_result(tmp_path / D.RESULT_NAME)
    assert result["config"] == json.loads(json.dumps(D.SMOKE.__dict__)) and result["n"] == D.SMOKE.n_test
    assert set(result["runs"]) == {"paper values", "tuned values"}
    for conds in result["runs"].values():
        assert set(conds) == {"clean", "Gaussian σ=0.1"} and all(set(s) == set(D.SETS) for s in conds.values())
    extra = weights.load_provenance(tmp_path / D.NAME)["extra"]
    assert extra["options"]["patience"] == 1 and 1 <= extra["best_epoch"] <= extra["epochs_run"] <= 2
    family = D.family(result)
    assert len(family) == 12 and {v.n for v in family} == {D.SMOKE.n_test}
    assert all(v.p_holm is not None and v.p_holm >= v.p for v in family)
    monkeypatch.setattr(train, "reference_feedback_run", lambda *a, **k: pytest.fail("trained again"))
    D.main(["--smoke", "--out", str(tmp_path)])  # the saved decoders are reused; the outcomes are the same
    assert weights.load_json_result(tmp_path / D.RESULT_NAME)["runs"] == result["runs"]


def test_smoke_needs_a_scratch_folder(capsys):
    with pytest.raises(SystemExit) as exit_info:
        D.main(["--smoke"])  # a tiny result must never overwrite the committed one
    assert exit_info.value.code == 2 and "scratch folder with --out" in capsys.readouterr().err


def test_family_on_hand_made_outcomes():
    n = 10
    committed = {"t0": [0] * n, "T": [1] * 6 + [0] * 4}  # +60 points over t=0
    longer = {"t0": [0] * n, "T": [1] * 5 + [0] * 5}  # one image fewer than committed at t=T
    packed = {k: {p: study.pack(torch.tensor(v, dtype=torch.bool)) for p, v in d.items()}
              for k, d in zip(D.SETS, (committed, longer))}
    result = {"n": n, "runs": {"paper values": {"clean": packed}}}
    gain_c, gain_l, diff = D.family(result)
    assert gain_c.estimate == pytest.approx(60.0) and gain_l.estimate == pytest.approx(50.0)
    assert diff.estimate == pytest.approx(-10.0) and diff.p == pytest.approx(1.0)  # one discordant image: p = 1
    assert "longer-trained − committed" in diff.contrast


def test_committed_result_uses_chapter_4s_images_and_decoders():
    """The committed decoders at the paper values must give exactly chapter 4's committed per-image outcomes."""
    path = D.result_path()
    result = weights.load_json_result(path)
    assert result["config"] == json.loads(json.dumps(D.Config().__dict__)) and result["n"] == 10_000
    ch4 = weights.load_json_result(path.parent / "ch4_dynamics.json")["chunks"]
    for cond, key in (("clean", "clean-0"), ("Gaussian σ=0.1", "gaussian-0.1")):
        mine = result["runs"]["paper values"][cond]["committed"]
        theirs = ch4[f"run/paper/0/{key}/prediction"]
        assert (mine["t0"], mine["T"]) == (theirs["t0"], theirs["T"])
    assert result["values"]["paper values"] == dict(dynamics_runs.Config().paper)
    assert result["values"]["tuned values"] == {k: v for k, v in weights.load_json_result(
        path.parent / "ch4_tuned_hparams.json")["recommended"].items() if k in ("beta", "lam", "alpha")}
