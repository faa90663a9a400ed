"""How verdict families are shown: p-values and labels formatted to what they carry (exact strings), the table
collapsed under a forest plot, findings as Markdown, and the forest plot's artists on a small hand-made family."""
import matplotlib
import numpy as np
import pytest
import torch

from pcnet.experiments import plotting
from pcnet.experiments import verdicts as V

matplotlib.use("Agg")


def _pairs(n11, n10, n01, n00):
    a = torch.tensor([1] * n11 + [1] * n10 + [0] * n01 + [0] * n00, dtype=torch.bool)
    b = torch.tensor([1] * n11 + [0] * n10 + [1] * n01 + [0] * n00, dtype=torch.bool)
    return a, b


def _family():
    # three hand-made verdicts: a gain, no effect, a cost (points, null 0), one Holm family
    return V.holm_family([
        V.Verdict("eps = 0.02: dynamics minus zero feedback", 200, 4.0, 1.12, 6.86, 3.94, "exact McNemar", 1.129602e-05),
        V.Verdict("eps = 0.02: dynamics minus mean feedback", 200, 0.0, -2.92, 2.92, 3.94, "exact McNemar", 1.0),
        V.Verdict("eps = 0.02: dynamics minus rescale (fixed point)", 200, -5.0, -8.0, -2.0, 3.5, "exact McNemar",
                  0.004)])


@pytest.mark.parametrize("p, text", [(1.129602e-05, "1.1e-05"), (3.7e-08, "3.7e-08"), (0.0123, "0.012"),
                                     (0.31, "0.31"), (1.0, "1"), (0.05, "0.05"), (0.00123, "0.0012"),
                                     (0.0, "0"), (None, "")])
def test_format_p_prints_what_the_number_carries(p, text):
    assert V.format_p(p) == text


def test_short_labels_move_the_shared_part_to_the_title():
    title, labels = V.short_labels(["eps = 0.02: dynamics minus zero feedback", "eps = 0.02: dynamics minus mean"])
    assert title == "eps = 0.02" and labels == ["dynamics minus zero feedback", "dynamics minus mean"]
    assert V.short_labels(["mCE: paper: dynamics", "mCE: TENT"]) == ("mCE", ["paper: dynamics", "TENT"])
    assert V.short_labels(["mCE: paper: a", "mCE: paper: b"]) == ("mCE: paper", ["a", "b"])
    # only a whole part before ": " is shared; one contrast keeps its label
    assert V.short_labels(["clean: a", "cleanish: b"]) == ("", ["clean: a", "cleanish: b"])
    assert V.short_labels(["eps = 0.01: t = 6 minus t = 0", "eps = 0.02: t = 6 minus t = 0"]) == (
        "", ["eps = 0.01: t = 6 minus t = 0", "eps = 0.02: t = 6 minus t = 0"])
    assert V.short_labels(["ch. 4, backbone 0: x", "ch. 4, backbone 1: x"]) == (
        "", ["ch. 4, backbone 0: x", "ch. 4, backbone 1: x"])
    assert V.short_labels(["only one"]) == ("", ["only one"])


def test_table_exact_strings():
    frame = V.table(_family())
    assert frame.attrs["title"] == "eps = 0.02"
    assert frame.to_dict("records") == [
        {"contrast": "dynamics minus zero feedback", "n": "200", "estimate [95% interval]": "+4.00 [+1.12, +6.86] points",
         "MDE": "3.94", "test": "exact McNemar", "p": "1.1e-05", "Holm p": "3.4e-05", "verdict": "gain"},
        {"contrast": "dynamics minus mean feedback", "n": "200", "estimate [95% interval]": "+0.00 [-2.92, +2.92] points",
         "MDE": "3.94", "test": "exact McNemar", "p": "1", "Holm p": "1", "verdict": "none"},
        {"contrast": "dynamics minus rescale (fixed point)", "n": "200", "estimate [95% interval]": "-5.00 [-8.00, -2.00] points",
         "MDE": "3.50", "test": "exact McNemar", "p": "0.004", "Holm p": "0.008", "verdict": "cost"}]
    html = V.details_html(frame, summary="table")
    assert html.startswith('<details class="verdict-table"><summary>table</summary>') and html.endswith("</details>")
    assert "<td>dynamics minus rescale (fixed point)</td>" in html and "…" not in html


def test_a_null_on_the_gain_side_is_not_a_plain_no_effect():
    # alpha = 0 of chapter 4: +0.95 [+0.23, +1.68] uncorrected, not significant after Holm
    v = V.Verdict("α=0", 10000, 0.95, 0.23, 1.68, 0.6, "exact McNemar", 0.01, p_holm=0.08)
    assert v.effect == "none"
    assert v.phrase == ("no detectable effect after Holm correction, though the uncorrected interval excludes 0 on "
                        "the gain side (any gain is below 1.68 points)")
    assert V.short_verdict(v) == "none after Holm; uncorrected interval excludes 0 (gain side)"
    # lower is better (a ratio, null 1): an interval below 1 is the gain side
    r = V.Verdict("mCE", 2000, 0.99, 0.985, 0.995, 0.01, "BCa bootstrap", 0.01, p_holm=0.2, null=1.0,
                  higher_is_better=False, unit="", digits=3)
    assert r.phrase.startswith("no detectable effect after Holm correction, though the uncorrected interval "
                               "excludes 1 on the gain side")
    # an interval across the null stays a plain bound
    assert V.Verdict("x", 10, 0.5, -1.0, 2.0, 3.0, "t", 0.5).phrase == "no detectable effect: any gain is below 2.00 points"


def test_bullets_escape_markdown():
    text = V.bullets(["robust accuracy <= 56.5% [50.0, 63.0]", "- already a bullet with *stars* and x_y", "  "])
    assert text == ("- robust accuracy \\<= 56.5% \\[50.0, 63.0\\]\n"
                    "- already a bullet with \\*stars\\* and x\\_y")


def test_forest_plot_draws_estimates_intervals_mde_and_the_null_line():
    fam = _family()
    fig = plotting.forest_plot(fam)
    ax = fig.axes[0]
    assert ax.get_title() == "eps = 0.02"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dynamics minus zero feedback", "dynamics minus mean feedback",
                                                            "dynamics minus rescale (fixed point)"]
    assert list(ax.get_yticks()) == [2, 1, 0]  # first contrast on top
    bars = ax.containers
    assert len(bars) == 3
    for container, v, y in zip(bars, fam, (2, 1, 0)):
        line, _, (segments,) = container.lines
        assert list(line.get_xdata()) == [v.estimate] and list(line.get_ydata()) == [y]
        (x0, y0), (x1, y1) = segments.get_segments()[0]
        assert (x0, x1) == pytest.approx((v.low, v.high)) and y0 == y1 == y
        assert matplotlib.colors.to_hex(line.get_color()) == plotting.EFFECT_COLORS[v.effect]
    mde = [ln for ln in ax.lines if ln.get_linewidth() == 7]
    assert [list(ln.get_xdata()) for ln in mde] == [[-3.94, 3.94], [-3.94, 3.94], [-3.5, 3.5]]
    null = [ln for ln in ax.lines if list(ln.get_xdata()) == [0, 0]]
    assert len(null) == 1 and null[0].get_label() == "no effect (0)"
    matplotlib.pyplot.close(fig)


def test_forest_plot_refuses_a_mixed_family_and_family_plot_splits_it():
    ratio = V.Verdict("mCE: dynamics", 2000, 1.011, 1.005, 1.017, 0.009, "BCa bootstrap", 0.001, null=1.0,
                      higher_is_better=False, unit="", digits=3)
    diff = V.Verdict("mCE: dynamics - rescale", 2000, -0.015, -0.025, -0.006, 0.014, "BCa bootstrap", 0.001,
                     higher_is_better=False, unit="", digits=3)
    with pytest.raises(ValueError, match="mix no-effect values.*family_plot"):
        plotting.forest_plot([ratio, diff])
    assert plotting.family_groups([ratio, diff, ratio]) == [[ratio, ratio], [diff]]
    with pytest.raises(ValueError, match="empty"):
        plotting.forest_plot([])
    with pytest.raises(ValueError, match="empty"):
        plotting.family_plot([])
    with pytest.raises(ValueError, match="2 labels for 3 verdicts"):
        plotting.forest_plot(_family(), labels=["a", "b"])


def test_family_plot_has_one_panel_per_null_and_show_table_collapses_the_table(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    ratio = V.Verdict("mCE: dynamics", 2000, 1.011, 1.005, 1.017, 0.009, "BCa bootstrap", 0.001, null=1.0,
                      higher_is_better=False, unit="", digits=3)
    fam = V.holm_family([ratio, *[V.Verdict(f"mCE: d - {c}", 2000, -0.015, -0.025, -0.006, 0.014, "BCa bootstrap",
                                            0.001, higher_is_better=False, unit="", digits=3) for c in "ab"]])
    fig = plotting.family_plot(fam)
    assert len(fig.axes) == 2 and [len(ax.containers) for ax in fig.axes] == [1, 2]
    assert [ln.get_xdata()[0] for ax in fig.axes for ln in ax.lines if ln.get_label().startswith("no effect")] == [1, 0]
    text = plotting.show_table(fam, summary="table")
    (html,) = shown
    assert html.data == text and text.startswith('<details class="verdict-table"><summary>table (mCE)</summary>')
    matplotlib.pyplot.close(fig)


def test_a_withheld_verdict_is_no_comparison_in_tables_and_plots():
    v = V.Verdict("eps = 0.02: a", 200, 4.0, 1.0, 7.0, 3.9, "exact McNemar", 0.01, withheld="not converged")
    assert V.short_verdict(v) == "no comparison"
    fig = plotting.forest_plot([v])
    (container,) = fig.axes[0].containers
    assert matplotlib.colors.to_hex(container.lines[0].get_color()) == plotting.EFFECT_COLORS["withheld"]
    assert "no comparison" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    matplotlib.pyplot.close(fig)
