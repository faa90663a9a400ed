"""Chapter 6's report: robust accuracy as an upper bound, attack convergence, and the verdict families.

Input: the study of :func:`pcnet.experiments.robustness_study.study` (plain JSON). Every attack's per-image
correctness is an *upper bound* on robust accuracy (a stronger attack can only lower it); an image counts as
robust only if no attack fooled it (per-image worst case). Intervals: Wilson for one accuracy, Newcombe + exact
McNemar for paired contrasts, Holm within a family (:mod:`pcnet.experiments.verdicts`). Nothing runs at import.
"""
from __future__ import annotations

import dataclasses

import torch

from .optional import require
from . import stats, verdicts

LABELS = {"t0": "t = 0 (backbone)", "dynamics": "t = T (dynamics)", "zero": "zero feedback",
          "shuffled": "shuffled feedback", "mean": "mean feedback", "rescale": "rescale (fixed point)",
          "bpda-feedforward": "BPDA feedforward", "bpda-last-k": "BPDA last k",
          "bpda-detached-error": "BPDA detached error"}


def label(model: str) -> str:
    """A model's name for the page: LABELS, and "BPDA last k on zero feedback" for a BPDA variant on a control."""
    base, _, control = model.partition("@")
    return LABELS[base] + (f" on {LABELS[control]}" if control else "")


def attacked_as(run_model: str, model: str) -> bool:
    """Whether a run on ``run_model`` attacks ``model``'s exact function: the model itself, a BPDA variant of the
    dynamics ("bpda-last-k") or of a feedback control ("bpda-last-k@zero")."""
    if run_model == model:
        return True
    base, _, control = run_model.partition("@")
    return base.startswith("bpda-") and (control == model or (not control and model == "dynamics"))


def _runs(result: dict, *, model: str, eps: float) -> dict:
    return {k: r for k, r in result["runs"].items() if r["model"] == model and r["eps"] == eps}


def attack_outcomes(result: dict, *, model: str, eps: float) -> dict[str, torch.Tensor]:
    """{run key: per-image correctness (N,)} of every attack on ``model`` at ``eps``; for the dynamics also
    the transfer from the backbone's adversarial images and the BPDA attacks (evaluated on the dynamics)."""
    out = {k: torch.tensor(r["correct"]) for k, r in result["runs"].items()
           if r["eps"] == eps and attacked_as(r["model"], model)}
    if model == "dynamics":
        for k, r in _runs(result, model="t0", eps=eps).items():
            out["transfer from " + k] = torch.tensor(r["transfer"])
    if not out:
        raise ValueError(f"no attack on model={model!r} at eps={eps} in the study")
    return out


def robust(result: dict, *, model: str, eps: float) -> torch.Tensor:
    """Per-image worst case over every attack on ``model`` at ``eps``: bool (N,)."""
    return torch.stack(list(attack_outcomes(result, model=model, eps=eps).values())).all(0)  # (N,)


def _bound(correct) -> dict:
    est, low, high = (100 * float(v) for v in stats.proportion_interval(correct))
    return {"robust (%) <=": round(est, 1), "low": round(low, 1), "high": round(high, 1)}


def sweep_table(result: dict, *, models=("t0", "dynamics")):
    """One row per (eps, model): n, each attack's robust accuracy and the worst case with its Wilson interval."""
    pd = require("pandas", purpose="robustness_report.sweep_table")
    rows = []
    for eps in result["config"]["eps_sweep"]:
        for model in models:
            outcomes = attack_outcomes(result, model=model, eps=eps)
            worst = torch.stack(list(outcomes.values())).all(0)
            row = {"eps": eps, "model": label(model), "n": len(worst), **_bound(worst)}
            row["strongest attack"] = min(outcomes, key=lambda k: int(outcomes[k].sum()))
            rows.append(row)
    return pd.DataFrame(rows)


def attack_table(result: dict, *, eps: float):
    """Every attack at ``eps``: model, attack, budget and its robust accuracy (an upper bound) with interval."""
    pd = require("pandas", purpose="robustness_report.attack_table")
    rows = [{"model": label(r["model"]), "attack": r["attack"], "budget": f"{r['budget']} x {r['restarts']}",
             **_bound(r["correct"])} for r in result["runs"].values() if r["eps"] == eps]
    rows += [{"model": LABELS["dynamics"], "attack": "transfer (" + r["attack"] + " on t = 0)",
              "budget": f"{r['budget']} x {r['restarts']}", **_bound(r["transfer"])}
             for r in result["runs"].values() if r["eps"] == eps and r["model"] == "t0"]
    return pd.DataFrame(rows)


def convergence(result: dict, *, tolerance: float) -> list[dict]:
    """For each (model, attack) run at two budgets at the main eps: images left robust by the weak and by the
    strong budget; ``converged`` when the two differ by at most ``tolerance`` points (either way: more
    robust images under the stronger budget means the attack's randomness, not its budget, decides). Where
    two or more attacks ran at two budgets, one more row compares their per-image worst cases."""
    eps, out = result["config"]["eps_main"], []
    for model in ("t0", "dynamics"):
        by_attack, pairs = {}, {}
        for r in _runs(result, model=model, eps=eps).values():
            by_attack.setdefault(r["attack"], []).append(r)
        for attack, runs in by_attack.items():
            if len(runs) >= 2:
                pairs[attack] = sorted(runs, key=lambda r: (r["budget"], r["restarts"]))[:: len(runs) - 1]
        for attack, (weak, strong) in pairs.items():
            out.append(_converged(model, attack, weak["correct"], strong["correct"], tolerance,
                                  f"{weak['budget']} x {weak['restarts']}", f"{strong['budget']} x {strong['restarts']}"))
        if len(pairs) >= 2:
            weak, strong = (torch.tensor([p[i]["correct"] for p in pairs.values()]).all(0) for i in (0, 1))  # (N,)
            out.append(_converged(model, "worst case over " + ", ".join(pairs), weak, strong, tolerance, "weak", "strong"))
    return out


def _converged(model: str, attack: str, weak, strong, tolerance: float, weak_budget: str, strong_budget: str) -> dict:
    w, s = (100 * float(torch.as_tensor(c, dtype=torch.float).mean()) for c in (weak, strong))
    return {"model": LABELS[model], "attack": attack, "weak budget": weak_budget, "strong budget": strong_budget,
            "weak (%)": round(w, 1), "strong (%)": round(s, 1), "converged": abs(w - s) <= tolerance}


def convergence_lines(rows: list[dict], *, tolerance: float) -> list[str]:
    """One sentence per unconverged attack (or one saying all converged, within ``tolerance`` points), then one
    per worst-case row, converged or not: the worst case is what the robust accuracies rest on."""
    single = [r for r in rows if not r["attack"].startswith("worst case")]
    bad = [r for r in single if not r["converged"]]
    lines = [f"{r['attack']} on {r['model']} has NOT converged: {r['weak (%)']}% at {r['weak budget']} vs "
             f"{r['strong (%)']}% at {r['strong budget']} (tolerance {tolerance:g} points); its robust accuracy is "
             "an upper bound that a longer attack may lower." for r in bad]
    if single and not bad:
        lines = [f"Every attack run at two budgets agrees within {tolerance:g} points: converged."]
    return lines + [f"The {r['attack']} on {r['model']}: {r['weak (%)']}% at the weak budgets vs {r['strong (%)']}% "
                    f"at the strong ones: " + ("converged" if r["converged"] else "NOT converged")
                    + f" (tolerance {tolerance:g} points)." for r in rows if r["attack"].startswith("worst case")]


def masking_line(result: dict) -> str:
    """At the main eps: does a surrogate-gradient attack on the dynamics (BPDA, or transfer from t = 0) leave fewer
    images robust than the best attack through the true gradient (APGD, AutoAttack)? Then the true gradient is
    partly masked, and only the worst case, which includes the surrogates, bounds robust accuracy."""
    eps = result["config"]["eps_main"]
    outcomes = attack_outcomes(result, model="dynamics", eps=eps)
    pct = {k: 100 * float(v.float().mean()) for k, v in outcomes.items()}
    true = {k: v for k, v in pct.items() if k.startswith("dynamics/") and "/square/" not in k}
    surrogate = {k: v for k, v in pct.items() if k.startswith(("bpda-", "transfer from"))}
    if not true or not surrogate:
        return f"eps = {eps:g}: no surrogate-gradient attack ran on the dynamics; gradient masking is not checked."
    best_true, best_surrogate = min(true, key=true.get), min(surrogate, key=surrogate.get)
    if surrogate[best_surrogate] < true[best_true]:
        return (f"eps = {eps:g}: {best_surrogate} leaves {surrogate[best_surrogate]:.1f}% robust, fewer than the best "
                f"attack through the true gradient ({best_true}: {true[best_true]:.1f}%): the dynamics' gradient is "
                "partly masked, so only the worst case over all attacks bounds their robust accuracy.")
    return (f"eps = {eps:g}: no BPDA or transfer attack beats the best attack through the true gradient "
            f"({best_true}: {true[best_true]:.1f}% vs {best_surrogate}: {surrogate[best_surrogate]:.1f}%): no sign "
            "of gradient masking.")


def suite_convergence(result: dict, *, model: str, eps: float, tolerance: float) -> tuple[bool, str]:
    """Whether ``model``'s per-image worst case at ``eps`` has converged: every attack of its suite (its own runs,
    and for the dynamics the BPDA and transfer attacks) ran at a weak and a strong budget, and the worst case over
    the weak budgets and over the strong ones differ by at most ``tolerance`` points. (ok, the reason in words)."""
    groups: dict = {}
    for key, r in result["runs"].items():
        if r["eps"] != eps:
            continue
        if attacked_as(r["model"], model):
            groups.setdefault((r["model"], r["attack"]), []).append(r["correct"])
        if model == "dynamics" and r["model"] == "t0" and "transfer" in r:
            groups.setdefault(("transfer", r["attack"]), []).append(r["transfer"])
    if not groups:
        return False, f"no attack on {LABELS[model]} at eps = {eps:g}"
    # AutoAttack runs at the library's fixed settings: it has no budget to double and counts in both worst cases
    single = sorted(f"{m}/{a}" for (m, a), runs in groups.items() if len(runs) < 2 and a != "autoattack")
    if single:
        return False, f"{model}: not checked ({', '.join(single)} at one budget only)"
    budgets = {}
    for k in groups:  # the weak and the strong run of each attack, by (budget, restarts)
        runs = [r for r in result["runs"].values() if r["eps"] == eps and (r["model"], r["attack"]) == k
                or (k[0] == "transfer" and r["model"] == "t0" and r["attack"] == k[1] and r["eps"] == eps)]
        ordered = sorted(runs, key=lambda r: (r["budget"], r["restarts"]))
        field = "transfer" if k[0] == "transfer" else "correct"
        budgets[k] = (ordered[0][field], ordered[-1][field])
    weak, strong = (100 * float(torch.tensor([b[i] for b in budgets.values()]).all(0).float().mean()) for i in (0, 1))
    if abs(weak - strong) > tolerance:
        return False, f"{model}: not converged ({weak:.1f}% at the weak budgets, {strong:.1f}% at the strong ones)"
    return True, f"{model}: converged ({weak:.1f}% at the weak budgets, {strong:.1f}% at the strong ones)"


def _compared(result: dict, a: str, b: str, *, eps: float, contrast: str, tolerance: float) -> verdicts.Verdict:
    """Worst-case robust accuracy of model ``a`` minus model ``b`` at ``eps`` -- or, when either worst case has not
    converged, a withheld verdict that states both upper bounds and why no comparison is made."""
    ra, rb = robust(result, model=a, eps=eps), robust(result, model=b, eps=eps)
    v = verdicts.paired_proportions(ra, rb, contrast=contrast)
    why = [reason for ok, reason in (suite_convergence(result, model=m, eps=eps, tolerance=tolerance) for m in (a, b))
           if not ok]
    if why:
        bounds = f"robust accuracy <= {100 * ra.float().mean():.1f}% ({a}), <= {100 * rb.float().mean():.1f}% ({b})"
        return dataclasses.replace(v, withheld=f"{bounds}; " + "; ".join(why))
    return v


def timestep_family(result: dict, *, tolerance: float = 1.0) -> list[verdicts.Verdict]:
    """Dynamics (t = T) minus backbone (t = 0) worst-case robust accuracy at every eps, Holm within the family;
    withheld ("no comparison") where either worst case has not converged (:func:`suite_convergence`)."""
    T = result["config"]["timesteps"]
    return verdicts.holm_family([_compared(result, "dynamics", "t0", eps=eps, contrast=f"eps = {eps:g}: t = {T} minus t = 0",
                                           tolerance=tolerance) for eps in result["config"]["eps_sweep"]])


def robust_under(result: dict, *, model: str, eps: float, like: str) -> torch.Tensor:
    """Per-image worst case for ``model`` over the attacks (attack, budget, restarts) run on model ``like``:
    two models compared under the same attacks (the dynamics face more attacks than the controls)."""
    same = {(r["attack"], r["budget"], r["restarts"]) for r in _runs(result, model=like, eps=eps).values()}
    runs = [r for r in _runs(result, model=model, eps=eps).values() if (r["attack"], r["budget"], r["restarts"]) in same]
    if len(runs) != len(same):
        raise ValueError(f"model={model!r} lacks some of the attacks run on {like!r} at eps={eps}")
    return torch.stack([torch.tensor(r["correct"]) for r in runs]).all(0)  # (N,)


def control_family(result: dict, *, tolerance: float = 1.0) -> list[verdicts.Verdict]:
    """At the main eps: dynamics minus each control, each scored on its own per-image worst case over every attack
    run on it, Holm within the family; withheld where either worst case has not converged."""
    eps = result["config"]["eps_main"]
    return verdicts.holm_family([_compared(result, "dynamics", c, eps=eps, contrast=f"eps = {eps:g}: dynamics minus "
                                           f"{LABELS[c]}", tolerance=tolerance) for c in result["config"]["controls"]])


def clean_family(result: dict) -> list[verdicts.Verdict]:
    """Clean accuracy: dynamics minus t = 0 and minus each control (the cost side), Holm within the family."""
    clean = {k: torch.tensor(v) for k, v in result["clean"].items()}
    return verdicts.holm_family([verdicts.paired_proportions(clean["dynamics"], clean[m],
                                                             contrast=f"clean: dynamics minus {LABELS[m]}")
                                 for m in clean if m != "dynamics"])


def conclusion_lines(result: dict, *, timestep: list, control: list, clean: list, tolerance: float) -> list[str]:
    """The chapter's findings, one line each, from the study and its verdict families (every eps of the sweep)."""
    c, T = result["config"], result["config"]["timesteps"]
    sweep = sweep_table(result)
    square = (f"Square {c['queries']} queries ({c['queries_main']} at eps = {c['eps_main']:g})" if c["queries"]
              else "no Square")
    lines = [f"{len(result['labels'])} test images; beta = {c['beta']:g}, lam = {c['lam']:g}, alpha = {c['alpha']:g}, "
             f"T = {T}; APGD-CE/DLR {c['steps']} steps x {c['restarts']} restarts, {square}"
             + (", AutoAttack (standard) at the main eps" if c["autoattack"] else "")
             + (", BPDA " + ", ".join(m[len("bpda-"):] for m in c["bpda"]) if c["bpda"] else "") + "."]
    lines += convergence_lines(convergence(result, tolerance=tolerance), tolerance=tolerance) + [masking_line(result)]
    lines += [f"eps = {r.eps:g}, {r.model}: robust accuracy <= {r['robust (%) <=']:.1f}% "
              f"(95% interval [{r.low:.1f}, {r.high:.1f}])" for _, r in sweep.iterrows()]
    lines += [f"Dynamics vs t = 0 -- {v}" for v in timestep]
    lines += [f"Controls -- {v}" for v in control] + [f"Clean cost -- {v}" for v in clean]
    return lines + [summary(timestep, control)]


def summary(timestep: list, control: list) -> str:
    """One sentence: at which eps the dynamics gain or lose robust accuracy (Holm-corrected), where no comparison
    can be made (an unconverged worst case), and whether a gain survives every control."""
    by = {e: [v.contrast.split(":")[0] for v in timestep if v.effect == e] for e in ("gain", "cost", "none", "withheld")}
    text = "Conclusion: against the worst case over the attacks above the dynamics show "
    parts = [f"a gain at {', '.join(by['gain'])}" if by["gain"] else "",
             f"a loss at {', '.join(by['cost'])}" if by["cost"] else "",
             f"no detectable change at {', '.join(by['none'])} (upper bounds above)" if by["none"] else "",
             f"no comparison at {', '.join(by['withheld'])} (a worst case has not converged: only the upper bounds "
             "above are stated)" if by["withheld"] else ""]
    text += "; ".join(p for p in parts if p) + "."
    if by["gain"]:
        beaten = [v.contrast.split("minus ")[-1] for v in control if v.effect != "gain"]
        text += (f" The gain is not shown to be specific to the prediction's content: no detectable advantage over "
                 f"(or no comparison with) {', '.join(beaten)} (upper bounds above)." if beaten
                 else " The dynamics beat every control at the main eps.")
    return text


def family_table(family: list[verdicts.Verdict]):
    pd = require("pandas", purpose="robustness_report.family_table")
    return pd.DataFrame([v.as_row() for v in family])


def plot_sweep(table, *, ax, colors: dict):
    """Worst-case robust accuracy (upper bound, Wilson 95 % interval) against eps for each model in ``table``
    (models nudged apart along the log eps axis so their intervals do not hide each other)."""
    for k, (model, part) in enumerate(table.groupby("model", sort=False)):
        est, low, high = (part[c].to_numpy() for c in ("robust (%) <=", "low", "high"))
        ax.errorbar(part["eps"] * 1.04 ** k, est, yerr=[est - low, high - est], marker="o", capsize=3, label=model,
                    color=colors.get(model))
    eps = sorted(set(table["eps"]))
    ax.set(xlabel="L-inf eps", ylabel="robust accuracy (%), upper bound", xscale="log")
    ax.set_xticks(eps, [f"{e:g}" for e in eps])
    ax.minorticks_off()
    ax.legend()
