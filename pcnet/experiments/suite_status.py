"""Where chapter 6's shared, converged attack suite stands: its plan (from :meth:`Config.suite_of`), its fresh
images, its measured cost (``scripts/bench_suite.py``, committed as ``data/results/ch6_suite_cost.json``) and which
backbones have a committed result. Lines for the chapter; nothing runs at import.
"""
from __future__ import annotations

import pathlib

from .data import DATA_DIR
from .robustness_config import Config, jobs

COST_PATH = DATA_DIR / "results" / "ch6_suite_cost.json"
BENCH = "python scripts/bench_suite.py --out data/results/ch6_suite_cost.json"


def check_cost(cost: dict, suite: Config) -> None:
    """Refuse a cost file measured for another suite (its config digest differs): the projection would be stale."""
    if cost["config_digest"] != suite.digest():
        raise ValueError(f"{COST_PATH.name} priced another suite (digest {cost['config_digest']}, the suite's is "
                         f"{suite.digest()}); measure again with `{BENCH}`")


def suite_lines(cost: dict, *, first: Config, backbones=(0, 1, 2), folder=None) -> list[str]:
    """The suite's plan, its images against ``first`` (the study the chapter was designed on), its projected cost
    per backbone and the backbones with a committed result (``ch6_suite_backbone{b}_paper.json`` in ``folder``)."""
    from .robustness_study import images, suite_path

    suite = Config.suite_of(backbone_seed=0)
    check_cost(cost, suite)
    idx, seen = images(suite)[0], images(first)[0]
    runs = sorted({j.run for j in jobs(suite, len(idx))})
    models = sorted({r.split("/")[0] for r in runs})
    hours = cost["total_s"] / 3600
    folder = pathlib.Path(folder) if folder else suite_path(0, "paper").parent
    done = [b for b in backbones if (folder / suite_path(b, "paper").name).exists()]
    return [
        f"plan: {len(runs)} runs on {len(models)} attacked models at ε = {suite.eps_main:g}, T = {suite.timesteps}: "
        f"APGD-CE and APGD-DLR {suite.weak_steps}×{suite.restarts} and {suite.steps}×{suite.restarts}, Square "
        f"{suite.queries:,} and {suite.queries_main:,} queries, AutoAttack (standard)",
        f"images: {len(idx)} fresh test images, {int(sum(i in set(seen.tolist()) for i in idx.tolist()))} of them "
        f"among the {len(seen)} this chapter's study was designed on",
        f"measured cost ({cost['clock']} time on {cost['device']}, {cost['threads']} thread): at most {hours:,.0f} h per backbone and value set, {len(backbones) * hours:,.0f} h "
        f"for backbones {', '.join(map(str, backbones))}",
        "committed: " + (", ".join(f"backbone {b}" for b in done) if done else "no backbone yet") + "; not yet run: "
        + (", ".join(f"backbone {b}" for b in backbones if b not in done) or "none"),
    ]

