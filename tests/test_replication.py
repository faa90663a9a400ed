"""pcnet.experiments.replication: the noise-draw verdict (hand-computed), the declared rule, the smoke CLI."""
import dataclasses
import json
import math

import pytest
import torch
from scipy import stats as sps

from pcnet.experiments import replication as R
from pcnet.experiments.verdicts import Verdict


def test_draws_verdict_is_the_paired_t_on_per_image_means():
    a = torch.tensor([[1, 1, 0, 1, 0, 1], [1, 0, 0, 1, 1, 1]], dtype=torch.bool)  # (draws, n)
    b = torch.tensor([[0, 1, 0, 0, 0, 1], [1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    d = [100 * x for x in (0.5, 0.0, 0.0, 1.0, 0.5, 0.0)]  # per-image mean over draws of a - b, by hand
    ref = sps.ttest_1samp(d, 0.0)
    v = R.draws_verdict(a, b, contrast="c")
    mean, sd = sum(d) / 6, float(torch.tensor(d).std())
    half = sps.t.ppf(0.975, 5) * sd / math.sqrt(6)
    assert v.estimate == pytest.approx(100 / 3) and v.p == pytest.approx(ref.pvalue)
    assert (v.low, v.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert v.n == 6 and "2 draws" in v.test


def test_draws_verdict_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(draws, n >= 2\)"):
        R.draws_verdict(torch.ones(2, 5, dtype=torch.bool), torch.ones(3, 5, dtype=torch.bool), contrast="c")


def _v(p, est):
    return Verdict("c", 100, est, est - 1, est + 1, 1.0, "t", p, p_holm=p)


@pytest.mark.parametrize("verdicts, status", [
    ([_v(0.001, 1), _v(0.01, 2), _v(0.02, 1)], "replicates: a gain on backbones 0, 1, 2"),
    ([_v(0.001, 1), _v(0.5, 0.2), _v(0.9, 0)], "backbone-dependent: a gain on backbone 0; no detectable effect on "
                                               "backbones 1, 2"),
    ([_v(0.001, 1), _v(0.001, -1), _v(0.9, 0)], "does not replicate: a gain on backbone 0; a cost on backbone 1; no "
                                                "detectable effect on backbone 2"),
    ([_v(0.3, 1), _v(0.4, -1), _v(0.9, 0)], "does not replicate: no detectable effect on backbones 0, 1, 2"),
])
def test_claim_status_follows_the_declared_rule(verdicts, status):
    assert R.claim_status(verdicts) == status


def test_smoke_cli_writes_every_backbone_and_draw(tmp_path):
    out = tmp_path / "rep.json"
    assert R.main(["--smoke", "--out", str(out), "--cache", str(tmp_path / "chunks")]) == 0
    result = json.loads(out.read_text())["result"]
    assert {(r["backbone"], r["draw"]) for r in result["runs"]} == {(b, d) for b in (0, 1) for d in range(2)}
    fams = R.families(result)
    assert set(fams) >= {"dynamics t=T − t=0", "dynamics − zero-prediction (t=T)"}
    assert all(len(f) == 2 and all(v.p_holm is not None for v in f) for f in fams.values())
    assert len(R.findings(result)) == 5 and all("backbone 1:" in line for line in R.findings(result))
    draw0 = R.outcomes(result)[(0, "prediction", "T")][0]  # draw 0 on backbone 0 is chapter 4's noise draw
    assert draw0.shape == (40,)


def test_smoke_needs_a_scratch_output():
    with pytest.raises(SystemExit):
        R.main(["--smoke"])


def test_committed_replication_reproduces_chapter_4_on_the_shared_draws():
    """The committed study (workers ran beside other developers' uncommitted edits: their chunks record '-dirty')
    reproduces, image for image, every outcome it shares with chapter 4's study computed at clean revisions: backbone
    b's draw b is chapter 4's noise draw for that backbone."""
    from pcnet.experiments import dynamics_study as S
    from pcnet.experiments import weights
    rep = weights.load_json_result(R.RESULT_PATH)
    ch4 = weights.load_json_result(R.DATA_DIR / "results" / "ch4_dynamics.json")
    assert rep["config"] == json.loads(json.dumps(dataclasses.asdict(R.Config())))
    assert rep["inputs"] == {str(b): R.chunks.reference_inputs(backbone_seed=b) for b in (0, 1, 2)}  # today's weights
    o, n, shared = R.outcomes(rep), rep["config"]["n_test"], 0
    for b in rep["config"]["backbones"]:
        for m in R.METHODS:
            chunk = ch4["chunks"].get(f"run/paper/{b}/gaussian-0.1/{m}")
            for field in ("t0", "T") if chunk else ():
                if field in chunk:
                    assert torch.equal(o[(b, m, field)][b], S.unpack(chunk[field], n)), (b, m, field)
                    shared += 1
    assert shared == 17  # backbone 0: 4 feedback modes x (t0, T) + rescale; backbones 1, 2: dynamics and zero x (t0, T)
