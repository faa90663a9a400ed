"""The findings page (pcnet.experiments.findings): every number it shows comes from a committed result file,
recomputed here through the chapters' report functions; several backbones in a result show per backbone."""
import re

import pytest

from pcnet.experiments import corruption_report, corruption_study, dynamics_report, findings, robustness_report
from pcnet.experiments import verdicts as V

N_BOOT = 200


@pytest.fixture(scope="module")
def results():
    out = findings.load_results()
    if set(out) != {4, 5, 6}:
        pytest.skip("the committed results of chapters 4-6 are not all present")
    return out


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]\d+)?", text))


def _formats(v: V.Verdict) -> set[str]:
    d = v.digits
    return {f"{x:+.{d}f}" if v.null == 0 else f"{x:.{d}f}" for x in (v.estimate, v.low, v.high)} | _numbers(v.withheld) | {
        f"{v.mde:.{d}f}", f"{v.n:,}", V.format_p(v.p_holm)} | _numbers(v.contrast)


def _config_numbers(obj) -> set[str]:
    if isinstance(obj, dict):
        return set().union(*(_config_numbers(v) for v in obj.values())) if obj else set()
    if isinstance(obj, (list, tuple)):
        return set().union(*(_config_numbers(v) for v in obj)) if obj else set()
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {f"{obj:g}", str(obj)}
    return set()


def _recomputed(results) -> set[str]:
    """Every verdict of the page's claims recomputed from the result files with the chapters' report functions
    (not through findings), Holm-corrected per claim, formatted; plus the numbers of the studies' configs."""
    by_claim = {c.key: [] for c in findings.CLAIMS}
    r4 = results[4]
    if "replication" in r4:  # chapter 4's replication over backbones and noise draws is its source
        from pcnet.experiments import replication

        for name, family in replication.families(r4["replication"]).items():
            by_claim["noise" if "t=T − t=0" in name else "content"] += family
        r4 = {"config": {}, "chunks": {}}
    cond = dynamics_report.main_condition(r4) if r4["chunks"] else None
    for seed in r4["config"].get("backbone_seeds", []):
        dyn = dynamics_report.outcomes(r4, "paper", cond, "prediction", seed=seed)
        by_claim["noise"].append(V.paired_proportions(dyn["T"], dyn["t0"], contrast=""))
        for c in findings.CONTROLS:
            if f"run/paper/{seed}/{dynamics_report.cond_key(cond)}/{c}" in r4["chunks"]:
                other = dynamics_report.outcomes(r4, "paper", cond, c, seed=seed)["T"]
                by_claim["content"].append(V.paired_proportions(dyn["T"], other, contrast=""))
    parts = results[5]["backbones"].values() if "backbones" in results[5] else [results[5]]  # replicates join
    for part in parts:
        study = corruption_study.load_study(part)
        by_claim["mce"].append(corruption_report.ratio_verdict(study, "paper: dynamics", summary="mCE", n_boot=N_BOOT))
        by_claim["content"] += [corruption_report.difference_verdict(study, "paper: dynamics", f"paper: {c}",
                                                                     summary="mCE", n_boot=N_BOOT)
                                for c in findings.CONTROLS]
    r6 = results[6]
    eps = r6["config"]["eps_main"]
    by_claim["adversarial"] += [v for v in robustness_report.timestep_family(r6) if v.contrast.startswith(f"eps = {eps:g}:")]
    by_claim["content"] += robustness_report.control_family(r6)
    allowed = set()
    for family in by_claim.values():
        allowed |= set().union(*(_formats(v) for v in V.holm_family(family)))  # Holm over the claim
    for r in results.values():
        allowed |= _config_numbers(r["config"]) | _config_numbers(r.get("replication", {}).get("config", {}))
    return allowed


def test_every_number_on_the_page_comes_from_a_result_file(results):
    rows = findings.rows(results, n_boot=N_BOOT)
    text = findings.page(rows) + "\n" + findings.summary_table(rows)
    text = re.sub(r'<a href="[^"]*">chapter \d</a>', "", text)  # the links name chapters, not results
    text = re.sub(r"backbone \d", "", text)  # column heads name the backbones
    shown = _numbers(text)
    assert len(shown) > 30  # the page does show numbers
    assert shown <= _recomputed(results), shown - _recomputed(results)
    # the page's cells are the verdicts themselves: backbone 0's chapter-4 gain over t = 0 is shown as computed
    noise = next(r for r in rows if r.claim == "noise")
    assert findings.cell(noise.verdicts[0]) in findings.page(rows)


def test_a_result_with_several_backbones_is_shown_per_backbone(results):
    r6 = results[6]
    two = {"config": r6["config"], "backbones": {"0": r6, "2": r6}}
    assert set(findings.per_backbone(two)) == {0, 2}
    assert set(findings.per_backbone({"config": {**r6["config"], "backbone_seed": 1}})) == {1}
    assert set(findings.per_backbone(r6)) == {0}  # no backbone_seed: backbone 0
    rows = findings.rows({6: two})
    adversarial = next(r for r in rows if r.claim == "adversarial")
    assert set(adversarial.verdicts) == {0, 2}
    table = findings.claim_table(findings.CLAIMS[2], [adversarial])
    line = next(x for x in table.splitlines() if x.startswith("| robust accuracy"))
    cells = [c.strip() for c in line.strip().strip("|").split(" | ")[1:]]
    assert cells[0] == cells[2] != "not tested" and cells[1] == "not tested"
    # the claim's Holm family spans both backbones: two equal raw p give Holm p = 2p (capped at 1)
    v = adversarial.verdicts[0]
    if v.effect == "withheld":  # no comparison may be stated (an unconverged worst case): no test, no Holm share
        assert v.p_holm is None and cells[0].startswith("**no comparison**")
    else:
        assert v.p_holm == pytest.approx(min(1.0, 2 * v.p))


def _v(est, low, high, p):
    return V.Verdict("", 10000, est, low, high, 0.5, "exact McNemar", p, p_holm=p)


def test_shrinkage_lines_decide_from_the_verdicts(monkeypatch, results):
    # hand-made family: at σ=0.1 the dynamics gain over t = 0 and over the rescale; at σ=0.2 no gain at all;
    # salt & pepper: a gain over t = 0 but none over the rescale
    made = {"Gaussian σ=0.1": (_v(1.0, 0.6, 1.4, 1e-6), _v(0.9, 0.5, 1.3, 1e-5)),
            "Gaussian σ=0.2": (_v(-0.2, -0.5, 0.1, 0.3), _v(2.0, 1.5, 2.5, 1e-9)),
            "salt & pepper 0.05": (_v(1.9, 1.5, 2.3, 1e-9), _v(0.3, -0.1, 0.6, 0.4))}
    family = [V.replace(v, contrast=f"{k}: {what}") for k, (a, b) in made.items()
              for v, what in ((a, "dynamics t=T − t=0"), (b, "dynamics − fixed-point rescale (t=T)"))]
    monkeypatch.setattr(dynamics_report, "main_family", lambda result, values: family)
    lines = findings.shrinkage_lines(results[4])
    assert lines == [
        "Gaussian σ=0.1: dynamics − t = 0 +1.00 [+0.60, +1.40] points (gain), dynamics − rescale +0.90 [+0.50, +1.30] "
        "points (gain): the dynamics beat the rescale, so shrinking activations does not explain the gain",
        "Gaussian σ=0.2: dynamics − t = 0 -0.20 [-0.50, +0.10] points (none), dynamics − rescale +2.00 [+1.50, +2.50] "
        "points (gain): no gain over t = 0 to explain",
        "salt & pepper 0.05: dynamics − t = 0 +1.90 [+1.50, +2.30] points (gain), dynamics − rescale +0.30 [-0.10, "
        "+0.60] points (none): no detectable advantage over the rescale, so shrinking activations may explain the gain"]


def test_replicate_lines_one_per_backbone(results):
    lines = findings.replicate_lines(results[4])
    seeds = results[4]["config"]["backbone_seeds"]
    assert [line.split(":")[0] for line in lines] == [f"backbone {s}" for s in seeds]
    dyn = dynamics_report.outcomes(results[4], "paper", dynamics_report.main_condition(results[4]), "prediction", seed=seeds[-1])
    v = V.paired_proportions(dyn["T"], dyn["t0"], contrast="")
    assert v._interval("points") in lines[-1]


def test_replicate_backbones_in_files_of_their_own_join_their_chapter(tmp_path, results):
    import json

    def write(name, result):
        (tmp_path / name).write_text(json.dumps({"result": result}))

    def load(path):
        return json.loads(path.read_text())["result"]

    r6 = results[6]
    small5 = {"config": {"per_class": 1}, "value_sets": {}}
    write("ch5_corruptions.json", small5)
    write("ch5_corruptions_backbone2.json", {**small5, "config": {"per_class": 1, "backbone_seed": 2}})
    write("ch6_robustness.json", r6)
    out = findings.load_results(tmp_path, load=load)
    assert set(out) == {5, 6} and set(out[5]["backbones"]) == {"0", "2"} and out[6] == r6  # no suite file yet
    write("ch6_suite_backbone1_paper.json", {**r6, "config": {**r6["config"], "backbone_seed": 1}})
    write("ch6_suite_backbone1_tuned.json", {**r6, "config": {**r6["config"], "backbone_seed": 1}})
    out = findings.load_results(tmp_path, load=load)
    assert set(findings.per_backbone(out[6])) == {1}  # the suite replaces the older design; tuned files stay out


def test_every_link_points_at_a_section_of_its_chapter(results):
    import json
    import pathlib

    book = pathlib.Path(__file__).resolve().parent.parent / "book"

    def anchors(page):
        cells = json.loads((book / f"{page}.ipynb").read_text())["cells"]
        heads = [line.lstrip("#").strip() for c in cells if c["cell_type"] == "markdown"
                 for line in "".join(c["source"]).splitlines() if line.startswith("#")]
        return {re.sub(r"[^a-z0-9]+", "-", h.lower()).strip("-") for h in heads}  # the ids Sphinx gives headings

    for row in findings.chapter4_rows(results[4]) + findings.chapter6_rows(results[6]):
        page, anchor = row.link.split(".html#")
        assert anchor in anchors(page), f"{row.link}: no such section in book/{page}.ipynb"
    assert "what-we-found" in anchors(findings.PAGES[5])


def test_chapter4_replication_is_the_source_once_committed(tmp_path, results):
    import dataclasses
    import json

    import torch

    from pcnet.experiments import dynamics_study, replication

    g = torch.Generator().manual_seed(0)
    cfg = {**dataclasses.asdict(replication.SMOKE), "n_test": 50, "backbones": [0, 2]}
    runs = [{"backbone": b, "draw": d, "method": m,
             **{f: dynamics_study.pack(torch.rand(50, generator=g) < (0.9 if m == "prediction" else 0.6))
                for f in (("t0", "T") if m == "prediction" else ("T",))}}
            for b in cfg["backbones"] for d in range(cfg["draws"]) for m in replication.METHODS]
    rep = {"config": cfg, "runs": runs}
    (tmp_path / "ch4_dynamics.json").write_text(json.dumps({"result": results[4]}))
    (tmp_path / findings.REPLICATION).write_text(json.dumps({"result": rep}))
    out = findings.load_results(tmp_path, load=lambda p: json.loads(p.read_text())["result"])
    assert out[4]["replication"] == rep and out[4]["config"] == results[4]["config"]  # both kept
    rows = findings.rows({4: out[4]})
    noise = next(r for r in rows if r.claim == "noise")
    assert set(noise.verdicts) == {0, 2} and "2 noise draws" in noise.contrast
    expected = replication.families(rep)["dynamics t=T − t=0"]
    assert [noise.verdicts[b].estimate for b in (0, 2)] == [v.estimate for v in expected]
    assert {r.short for r in rows if r.claim == "content"} == {"dynamics − zero-prediction", "dynamics − shuffled "
                                                                "prediction", "dynamics − mean prediction",
                                                                "dynamics − fixed-point rescale"}
    page = findings.page(rows)
    assert "not tested" in page and findings.cell(noise.verdicts[2]) in page  # backbone 1 absent: not tested


def _effect(est, low, high, p):
    return V.Verdict("", 2000, est, low, high, 0.5, "paired BCa", p, p_holm=p)


def test_status_follows_the_rule_and_waits_for_untested_backbones():
    """Declared rule (replication.RULE): every backbone significant in one direction replicates; a backbone still
    untested leaves the contrast undecided unless the tested ones already point in opposite directions."""
    gain, cost, none = _effect(1.0, 0.5, 1.5, 1e-4), _effect(-1.0, -1.5, -0.5, 1e-4), _effect(0.1, -0.3, 0.5, 0.6)
    row = lambda **v: findings.Row("content", 5, "mCE: dynamics − zero", "x", "dyn − zero",
                                   {int(k[1:]): x for k, x in v.items()})
    assert findings.status(row(b0=gain, b1=gain, b2=gain)) == "replicates: a gain on backbones 0, 1, 2"
    assert findings.status(row(b0=gain, b1=none, b2=gain)).startswith("backbone-dependent: a gain on backbones 0, 2")
    assert findings.status(row(b0=gain, b1=gain)) == ("undecided until backbone 2 is tested; so far a gain on "
                                                      "backbones 0, 1")
    assert findings.status(row(b0=gain)) == "undecided until backbones 1, 2 are tested; so far a gain on backbone 0"
    assert findings.status(row(b0=gain, b1=cost)).startswith("does not replicate: a gain on backbone 0; a cost")
    assert findings.status(row()) == "not tested"
    line = findings.replication_lines([row(b0=gain, b1=none)])[0]
    assert line.startswith("mCE: dynamics − zero: undecided until backbone 2 is tested; so far")
    assert "backbone 0: +1.00 [+0.50, +1.50]" in line and "backbone 1: +0.10 [-0.30, +0.50]" in line
    assert "n = 2,000" in line and "MDE 0.50" in line


def test_source_files_name_what_the_verdicts_come_from(tmp_path):
    """Chapter 8 names its sources: the replication study for chapter 4 (not the single draw), chapter 5 with its
    replicate backbones, and the suite files instead of chapter 6's first study."""
    for name in ("ch4_dynamics.json", "ch5_corruptions.json", "ch6_robustness.json"):
        (tmp_path / name).write_text("{}")
    assert findings.source_files(tmp_path) == {4: ["ch4_dynamics.json"], 5: ["ch5_corruptions.json"],
                                               6: ["ch6_robustness.json"]}
    for name in ("ch4_replication.json", "ch5_corruptions_backbone1.json", "ch6_suite_backbone0_paper.json"):
        (tmp_path / name).write_text("{}")
    assert findings.source_files(tmp_path) == {4: ["ch4_replication.json"],
                                               5: ["ch5_corruptions.json", "ch5_corruptions_backbone1.json"],
                                               6: ["ch6_suite_backbone0_paper.json"]}
