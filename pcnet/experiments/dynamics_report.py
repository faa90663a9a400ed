"""Chapter 4's report: verdict families, tables and figures built from the result of
:mod:`pcnet.experiments.dynamics_runs` (committed or recomputed). Every number the chapter prints comes from here.
"""
from __future__ import annotations

import numpy as np
import torch

from .optional import require
from . import dynamics_study as study
from . import plotting, stats
from .verdicts import holm_family, paired_proportions


def cond_key(cond) -> str:
    return f"{cond[0]}-{cond[1]:g}"


def conditions(result: dict) -> list:
    cfg = result["config"]
    return study.conditions(gaussian=cfg["gaussian"], salt_pepper=cfg["salt_pepper"])


def main_condition(result: dict) -> tuple:
    return ("gaussian", result["config"]["main_sigma"])


def outcomes(result: dict, values: str, cond, control: str, *, seed: int = 0, n: int | None = None) -> dict:
    """{"t0": (n,), "T": (n,)} bool per test image of one run (only "T" for the rescale)."""
    run = result["chunks"][f"run/{values}/{seed}/{cond_key(cond)}/{control}"]
    n = result["config"]["n_test"] if n is None else n
    return {k: study.unpack(run[k], n) for k in ("t0", "T") if k in run}


def accuracy_curve(result: dict, values: str, cond, control: str, *, seed: int = 0) -> np.ndarray:
    """Accuracy in percent per timestep (T+1,), or a single value for the rescale."""
    return 100 * np.asarray(result["chunks"][f"run/{values}/{seed}/{cond_key(cond)}/{control}"]["accuracy"])


def main_family(result: dict, values: str) -> list:
    """One Holm family per value set: at every condition, dynamics t=T vs t=0 and vs each control."""
    groups = {study.label(c): {m: outcomes(result, values, c, m) for m in study.MODES + ("rescale",)}
              for c in conditions(result)}
    return study.family(groups)


def replicate_table(result: dict):
    """Per-backbone verdicts at the main noise level (paper values): dynamics t=T − t=0 and − zero control,
    each with its own interval over images; the last rows give the mean over backbones and its spread."""
    pd = require("pandas", purpose="dynamics_report.replicate_table")

    cond, rows, est = main_condition(result), [], {"t=T − t=0": [], "− zero-prediction": []}
    for seed in result["config"]["backbone_seeds"]:
        dyn, zero = outcomes(result, "paper", cond, "prediction", seed=seed), outcomes(result, "paper", cond, "zero",
                                                                                        seed=seed)
        for name, v in (("t=T − t=0", paired_proportions(dyn["T"], dyn["t0"], contrast="")),
                        ("− zero-prediction", paired_proportions(dyn["T"], zero["T"], contrast=""))):
            est[name].append(v.estimate)
            rows.append({"backbone seed": seed, "contrast": f"dynamics {name}", "t=0 accuracy (%)":
                         round(100 * float(dyn["t0"].float().mean()), 2), **{k: v.as_row()[k] for k in
                                                                            ("estimate [interval]", "p", "MDE")}})
    for name, values in est.items():
        mean = stats.mean_interval(torch.tensor(values))
        rows.append({"backbone seed": "mean over seeds (t interval)", "contrast": f"dynamics {name}",
                     "estimate [interval]": stats.format_interval(mean), "p": None, "MDE": None,
                     "t=0 accuracy (%)": None})
        rows.append({"backbone seed": "spread (max − min)", "contrast": f"dynamics {name}",
                     "estimate [interval]": f"{max(values) - min(values):.2f}", "p": None, "MDE": None,
                     "t=0 accuracy (%)": None})
    return pd.DataFrame(rows)


def error_term_family(result: dict) -> list:
    """alpha = 0 ablation and error_scale='mean' against the paper run (projective scale), clean and main noise."""
    out = []
    for cond in (("clean", 0.0), main_condition(result)):
        paper = outcomes(result, "paper", cond, "prediction")["T"]
        for values, what in (("alpha0", "α=0 ablation"), ("errmean", 'error_scale="mean"')):
            other = outcomes(result, values, cond, "prediction")["T"]
            out.append(paired_proportions(paper, other,
                                          contrast=f"{study.label(cond)}: paper (α, projective) − {what}"))
    return holm_family(out)


def alpha_range_family(result: dict) -> tuple[list, list]:
    """Per alpha of the sweep: dynamics t=T − t=0 and dynamics − zero control (one Holm family), and the
    error term's size per PCoder (None where the states diverged)."""
    chunk, verdicts, sizes = result["chunks"]["alpha_range"], [], []
    for row in chunk["rows"]:
        dyn, zero = row["prediction"], row["zero"]
        if dyn is None or zero is None:
            sizes.append({"alpha": row["alpha"], "diverged": True})
            continue
        d = {k: study.unpack(dyn[k], chunk["n"]) for k in ("t0", "T")}
        verdicts.append(paired_proportions(d["T"], d["t0"], contrast=f"α={row['alpha']:g}: dynamics t=T − t=0"))
        verdicts.append(paired_proportions(d["T"], study.unpack(zero["T"], chunk["n"]),
                                           contrast=f"α={row['alpha']:g}: dynamics − zero-prediction"))
        sizes.append({"alpha": row["alpha"], "diverged": False,
                      **{f"PCoder {n + 1}": v for n, v in enumerate(dyn["error_term"])}})
    return holm_family(verdicts), sizes


def distance_table(result: dict):
    """Change of the correlation distance (noisy vs clean state, t=T minus t=0) per PCoder: mean over images
    with its t interval, for the dynamics, the zero control and untrained decoders, and the paired differences."""
    pd = require("pandas", purpose="dynamics_report.distance_table")

    change = {k: torch.tensor(v, dtype=torch.float64) for k, v in result["chunks"]["states"]["change"].items()}
    rows = []
    for n in range(change["prediction"].shape[0]):
        row = {"PCoder": n + 1}
        for k, v in change.items():
            row[k] = stats.format_interval(stats.mean_interval(v[n][torch.isfinite(v[n])]), digits=4)
        for other in ("zero", "untrained decoders"):
            diff = change["prediction"][n] - change[other][n]
            row[f"dynamics − {other}"] = stats.format_interval(stats.mean_interval(diff[torch.isfinite(diff)]),
                                                               digits=4)
        rows.append(row)
    return pd.DataFrame(rows).set_index("PCoder")


def tradeoff_points(result: dict) -> list[dict]:
    """(method, clean %, noisy %) points on the validation images for the trade-off figure."""
    chunk, tuned = result["chunks"]["tradeoff"], result["tuned"]
    noisy = {(r["beta"], r["lam"]): r["score"] for r in result["chunks"]["grid"]["rows"]
             if r["alpha"] == tuned["alpha"]}
    points = [{"method": "dynamics (β, λ grid)", "beta": r["beta"], "lam": r["lam"], "clean": 100 * r["score"],
               "noisy": 100 * noisy[(r["beta"], r["lam"])]} for r in chunk["grid_clean"] if not r["diverged"]]
    for name, acc in chunk["baselines"].items():
        points.append({"method": name, "clean": 100 * acc["clean"], "noisy": 100 * acc["noisy"]})
    return points


def plot_tradeoff(result: dict, ax) -> None:
    """Clean vs noisy validation accuracy: the dynamics over the beta, lam grid and the baselines."""
    points, colors = tradeoff_points(result), dict(zip(("backbone", "tuned rescale", "BN adaptation", "TENT"),
                                                       (plotting.color("backbone"), plotting.color("rescaled"),
                                                        plotting.PALETTE[2], plotting.PALETTE[3])))
    grid = [p for p in points if p["method"].startswith("dynamics")]
    ax.scatter([p["clean"] for p in grid], [p["noisy"] for p in grid], color=plotting.color("pcnet"), s=18,
               label=f"dynamics, β×λ grid (α={result['tuned']['alpha']:g})")
    for p in points:
        if p["method"] in colors:
            ax.scatter(p["clean"], p["noisy"], color=colors[p["method"]], marker="D", s=40, label=p["method"])
    ax.set_xlabel("clean validation accuracy (%)")
    ax.set_ylabel(f"validation accuracy, σ={result['config']['main_sigma']:g} (%)")
    ax.legend(fontsize=9)


def plot_accuracy(result: dict, values: str, axes) -> None:
    """Accuracy over timesteps per condition (one panel each): dynamics and the three feedback controls, the
    rescale as a dashed line."""
    names = {"prediction": "dynamics", "zero": "zero-prediction", "shuffled": "shuffled prediction",
             "mean": "mean prediction"}
    colors = {"prediction": plotting.color("pcnet"), "zero": plotting.color("zero"), "shuffled": plotting.PALETTE[3],
              "mean": plotting.PALETTE[2]}
    axes = list(axes)
    for ax in axes[len(conditions(result)):]:
        ax.axis("off")
    for ax, cond in zip(axes, conditions(result)):
        for mode in study.MODES:
            curve = accuracy_curve(result, values, cond, mode)
            ax.plot(np.arange(len(curve)), curve, label=names[mode], color=colors[mode])
        ax.xaxis.set_major_locator(require("matplotlib.ticker", purpose="dynamics_report.plot_accuracy")
                                   .MaxNLocator(integer=True))
        ax.axhline(float(accuracy_curve(result, values, cond, "rescale")), color=plotting.color("rescaled"), ls="--",
                   label="fixed-point rescale")
        ax.set_title(study.label(cond), fontsize=10)
        ax.set_xlabel("timestep t")
        ax.set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=9)


def findings(result: dict) -> list[str]:
    """The verdict lines the chapter's conclusion rests on (printed right under the prose)."""
    lines = []
    for values in ("paper", "tuned"):
        fam = main_family(result, values)
        lines.append(f"{values} values ({_values(result, values)}), n = {fam[0].n} test images, Holm over "
                     f"{len(fam)} contrasts:")
        lines += [f"  {v}" for v in fam]
    lines.append("error term (Holm within the family):")
    lines += [f"  {v}" for v in error_term_family(result)]
    return lines


def _values(result: dict, values: str) -> str:
    v = dict(result["config"]["paper"]) if values == "paper" else result["tuned"]
    return ", ".join(f"{k}={v[k]:g}" for k in ("beta", "lam", "alpha"))
