"""Chapter 5's TTA baselines over batch orders (issue 19 item 4b): order 0 is the chapter's run, the combined
interval is the one the docstring states, the best-method sentence rests on it, a smoke run writes nothing in data/."""
import dataclasses
import math

import pytest
import torch

from pcnet.experiments import corruption_report as R
from pcnet.experiments import corruption_study as S
from pcnet.experiments import tta_orders as T
from pcnet.experiments.verdicts import Verdict


def test_order_zero_reproduces_the_committed_study():
    """BN adaptation and TENT on batch order 0 give chapter 5's committed per-image results bit for bit (fog at
    severity 5 and the clean images; the committed chunk of order 0 matches on every set), and the reference is the
    committed t = 0."""
    from pcnet.experiments.weights import load_json_result

    study = S.load_study(load_json_result(S.RESULT_PATH))  # sha256-checked
    assert study["config"].get("backbone_seed", 0) == 0 and study["config"]["order_seed"] == 0  # made before the field
    torch.set_num_threads(1)
    config = T.Config()
    cset = S.study_data(dataclasses.replace(config.study(backbone=0, order=0), names=("fog",)))  # the same images
    net = T.backbone_net(config, 0)
    methods = T.tta_methods(net.backbone, config)
    order = S.random_order(len(cset["labels"]), seed=0)
    c = study["config"]["names"].index("fog")
    for s in (4,):
        got = S.evaluate_set(methods, cset["images"]["fog"][s], cset["labels"], order=order)  # {m: (1, n)}
        for m in T.METHODS:
            assert torch.equal(got[m][0], study["correct"][m][0, c, s]), (m, s)
    got = S.evaluate_set(methods, cset["clean"], cset["labels"], order=order)
    assert all(torch.equal(got[m][0], study["clean"][m][0]) for m in T.METHODS)
    ref = S.evaluate_set({"backbone": ((lambda x: net(x, timesteps=0)), config.batch, None)},
                         cset["images"]["fog"][2], cset["labels"], order=order)["backbone"]  # (1, n)
    assert torch.equal(ref[0], study["correct"][R.BACKBONE][0, c, 2])


def test_combine_by_hand():
    """Orders 0.1..0.5 (mean 0.3, variance 0.025, so 0.005 over k = 5), image SE 0.05 (0.0025), n = 101:
    SE^2 = 0.0075, Satterthwaite df = 0.0075^2 / (0.0025^2 / 100 + 0.005^2 / 4) = 8.9109..."""
    from scipy.stats import t

    c = T.combine([0.1, 0.2, 0.3, 0.4, 0.5], se_images=0.05, n_images=101)
    df = 0.0075 ** 2 / (0.0025 ** 2 / 100 + 0.005 ** 2 / 4)
    assert df == pytest.approx(8.910891, rel=1e-6) and c["df"] == pytest.approx(df)
    se = math.sqrt(0.0075)
    assert c["estimate"] == pytest.approx(0.3) and c["se"] == pytest.approx(se)
    half = t.ppf(0.975, df) * se
    assert c["low"] == pytest.approx(0.3 - half) and c["high"] == pytest.approx(0.3 + half)
    assert c["p"] == pytest.approx(2 * t.sf(0.3 / se, df))
    assert c["mde"] == pytest.approx((t.ppf(0.975, df) + t.ppf(0.8, df)) * se)
    assert c["sd_orders"] == pytest.approx(math.sqrt(0.025))
    with pytest.raises(ValueError, match="2 orders"):
        T.combine([0.1], se_images=0.05, n_images=101)


def _fake_result(k=3, n=40, names=("fog", "contrast"), seed=0):
    g = torch.Generator().manual_seed(seed)
    bits = lambda *shape: torch.rand(shape, generator=g) < 0.5
    runs = [{"backbone": 0, "part": "reference", "correct": {"backbone": S.encode_bits(bits(1, 2, 5, n))}}]
    runs += [{"backbone": 0, "part": "tta", "order": o, "correct": {m: S.encode_bits(bits(1, 2, 5, n))
                                                                    for m in T.METHODS}} for o in range(k)]
    return {"config": {"orders": list(range(k)), "backbones": [0]}, "names": list(names), "severities": [1, 2, 3, 4, 5],
            "n": n, "runs": runs}


def test_over_orders_is_the_mean_of_the_orders_with_their_spread():
    result = _fake_result()
    per = T.per_order(result, summary="mCE", n_boot=200)
    v, c = T.over_orders(result, summary="mCE", n_boot=200)
    assert v.estimate == pytest.approx(sum(p.estimate for p in per) / 3)
    assert c["per_order"] == pytest.approx([p.estimate for p in per])
    assert v.contrast == "mCE: TENT - BN adaptation" and "3 batch orders" in v.test and v.n == 40
    one = R.difference_verdict(T.order_study(result, backbone=0, order=1), "TENT", "BN adaptation", summary="mCE",
                               n_boot=200)
    assert per[1].estimate == pytest.approx(one.estimate) and per[1].low == pytest.approx(one.low)
    fam = T.family(result, n_boot=200)
    assert set(fam) == set(R.SUMMARIES) and all(v.p_holm is not None for v, _ in fam.values())


def test_best_method_rests_on_the_over_orders_verdict():
    v = lambda name, est, p: Verdict(name, 100, est, est - 0.1, est + 0.1, 0.1, "t", p, p_holm=p)
    fam = [v("mCE: TENT", 0.50, 0.0), v("mCE: BN adaptation", 0.51, 0.0), v("mCE: TENT - BN adaptation", -0.3, 0.01)]
    best = R.best_method(fam, summary="mCE", orders=5, over_orders=[v("mCE: TENT - BN adaptation", -0.2, 0.01)])
    assert "TENT, is the best method" in best and "5 batch orders" in best
    none = R.best_method(fam, summary="mCE", orders=5, over_orders=[v("mCE: TENT - BN adaptation", -0.2, 0.3)])
    assert "is not distinguishable from the runner-up, BN adaptation, over 5 batch orders" in none
    other = R.best_method(fam, summary="mCE", orders=5, over_orders=[v("mCE: TENT - BN adaptation", 0.2, 0.01)])
    assert "is not the best" in other and "BN adaptation, has the lower error" in other
    few = R.best_method(fam, summary="mCE", orders=3, over_orders=[v("mCE: TENT - BN adaptation", -0.2, 0.01)])
    assert "no best-method claim" in few and "is the best" not in few
    wider = fam + [v("mCE: paper: dynamics", 0.9, 0.5)]  # Holm within the family: 0.02 ranks 3rd of 4, x 2
    held = R.best_method(wider, summary="mCE", orders=5, over_orders=[v("mCE: TENT - BN adaptation", -0.2, 0.02)])
    assert "Holm p = 0.04" in held and "is the best method" in held
    unrelated = R.best_method(fam, summary="mCE", orders=5, over_orders=[v("mCE: paper: dynamics - TENT", -0.2, 0.01)])
    assert "ranks first on this batch order" in unrelated  # no over-orders verdict of this pair: the old rule


def test_smoke_cli_writes_nothing_in_data(tmp_path, capsys):
    before = T.RESULT_PATH.read_bytes() if T.RESULT_PATH.exists() else None
    out = tmp_path / "tta.json"
    assert T.main(["--smoke", "--out", str(out), "--n-boot", "50"]) == 0
    assert out.exists() and len(list((tmp_path / "tta.json.chunks").glob("*.json"))) == 1 + len(T.SMOKE.orders)
    st = T.store(T.SMOKE, chunk_dir=T.CHUNK_DIR)
    for job in T._jobs(T.SMOKE):
        assert not st.path(job, T.chunks.reference_inputs(backbone_seed=0)).exists()
    assert (T.RESULT_PATH.read_bytes() if T.RESULT_PATH.exists() else None) == before
    assert "TENT - BN adaptation" in capsys.readouterr().out


def test_cli_refuses_a_committed_result_it_cannot_hold(tmp_path):
    refused = (["--smoke"], ["--smoke", "--out", str(T.RESULT_PATH)], ["--backbone-seed", "1"], ["--orders", "3", "4"],
               ["--backbones", "0"])  # the committed result holds backbones 0, 1 and 2: one of them would drop two
    for argv in refused:
        with pytest.raises(SystemExit) as exit_info:
            T.main(argv)
        assert exit_info.value.code == 2


def test_a_one_order_worker_writes_its_part_and_no_verdict(tmp_path, capsys):
    out = tmp_path / "part.json"
    assert T.main(["--smoke", "--orders", "1", "--out", str(out), "--n-boot", "20"]) == 0
    assert out.exists() and len(list((tmp_path / "part.json.chunks").glob("*.json"))) == 2  # reference + order 1
    assert "no verdict over orders" in capsys.readouterr().out
