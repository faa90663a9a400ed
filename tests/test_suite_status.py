"""suite_status: chapter 6's lines on the shared suite -- plan, fresh images, measured cost, committed backbones."""
import json

import pytest

from pcnet.experiments import robustness_study as RS
from pcnet.experiments import suite_status as S
from pcnet.experiments.robustness_config import Config


def _cost(**change):
    return {"config_digest": Config.suite_of(backbone_seed=0).digest(), "total_s": 7200.0, "clock": "CPU",
            "device": "cpu", "threads": 1, **change}


def test_lines_give_plan_fresh_images_cost_and_committed_backbones(tmp_path):
    (tmp_path / RS.suite_path(1, "paper").name).write_text(json.dumps({}))
    lines = S.suite_lines(_cost(), first=Config(), folder=tmp_path)
    assert lines[0].startswith("plan: 66 runs on 18 attacked models at ε = 0.02, T = 10: APGD-CE and APGD-DLR 100×3 "
                               "and 200×3, Square 5,000 and 10,000 queries, AutoAttack (standard)")
    assert lines[1] == "images: 200 fresh test images, 0 of them among the 200 this chapter's study was designed on"
    assert "at most 2 h per backbone and value set, 6 h for backbones 0, 1, 2" in lines[2]
    assert lines[3] == "committed: backbone 1; not yet run: backbone 0, backbone 2"


def test_a_cost_measured_for_another_suite_is_refused():
    with pytest.raises(ValueError, match="priced another suite.*bench_suite.py --out"):
        S.suite_lines(_cost(config_digest="0" * 12), first=Config())
