"""The page "What the book found" (chapter 8): each of Predify's claims beside the book's verdict on every
backbone where it was tested, generated from the committed results through the chapters' own report functions
(:mod:`dynamics_report`, :mod:`corruption_report`, :mod:`robustness_report`); no number is typed by hand.

A result file holds one backbone (``config["backbone_seed"]``, 0 when absent) or several, as
``{"backbones": {"<seed>": <one backbone's result>, ...}}`` (:func:`per_backbone`); chapter 4's result names its
backbones in ``config["backbone_seeds"]`` and keys its runs by seed; replicate backbones written to files of their
own join their chapter (:func:`load_results`). A backbone no file holds reads "not tested".

The rule, declared before the numbers: within each claim, the contrasts on every backbone form one Holm family
(the chapters correct within their own, larger families, so their Holm p differ); a claim holds on a backbone when
its contrasts there are gains after that correction. Nothing runs at import.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import corruption_report, dynamics_report, robustness_report
from . import verdicts as V

BACKBONES = (0, 1, 2)
CONTROLS = ("zero", "shuffled", "mean", "rescale")
FILES = {4: "ch4_dynamics.json", 5: "ch5_corruptions.json", 6: "ch6_robustness.json"}
PAGES = {4: "04_dynamics", 5: "05_corruptions", 6: "06_adversarial"}
REPLICATION = "ch4_replication.json"  # chapter 4's main contrasts on every backbone over several noise draws
# replicate backbones' result files: (glob, whether they replace the chapter's main file rather than add to it)
REPLICATES = {5: ("ch5_corruptions_backbone[0-9]*.json", False), 6: ("ch6_suite_backbone[0-9]*_paper.json", True)}


@dataclass(frozen=True)
class Claim:
    key: str
    text: str  # Predify's claim, as the paper states it


CLAIMS = (
    Claim("noise", "Accuracy under Gaussian noise rises over timesteps"),
    Claim("mce", "The corruption error (mCE) falls over timesteps"),
    Claim("adversarial", "Adversarial robustness improves"),
    Claim("content", "The improvement comes from the feedback's predictions, not from shrinkage or from any feedback"),
)


@dataclass
class Row:
    """One contrast of a claim: its chapter, the section it comes from, and its verdict per backbone."""
    claim: str
    chapter: int
    contrast: str
    anchor: str
    short: str  # the contrast in a few words, for the forest plot's labels
    verdicts: dict = field(default_factory=dict)  # {backbone seed: Verdict}; absent: not tested

    @property
    def link(self) -> str:
        return f"{PAGES[self.chapter]}.html#{self.anchor}"


def per_backbone(result: dict) -> dict[int, dict]:
    """{backbone seed: that backbone's result} of a chapter-5 or chapter-6 result (see the module docstring)."""
    if "backbones" in result:
        return {int(k): v for k, v in result["backbones"].items()}
    return {int(result["config"].get("backbone_seed", 0)): result}


# ----------------------------------------------------------------------------- rows per chapter
def chapter4_rows(result: dict) -> list[Row]:
    """Dynamics t=T − t=0 and − each control at the main σ, paper values, on every backbone with the runs."""
    cond = dynamics_report.main_condition(result)
    label = dynamics_report.study.label(cond)
    noise = Row("noise", 4, f"{label}: dynamics t=T − t=0 (paper values)", "replication-over-backbones-and-noise-draws",
                "t=T − t=0")
    rows = {c: Row("content", 4, f"{label}: dynamics − {dynamics_report.study.CONTROL_NAMES[c]} (paper values)",
                   "replication-over-backbones-and-noise-draws", f"dynamics − {c}") for c in CONTROLS}
    for seed in result["config"]["backbone_seeds"]:
        key = f"run/paper/{seed}/{dynamics_report.cond_key(cond)}/"
        if key + "prediction" not in result["chunks"]:
            continue
        dyn = dynamics_report.outcomes(result, "paper", cond, "prediction", seed=seed)
        noise.verdicts[seed] = V.paired_proportions(dyn["T"], dyn["t0"], contrast=noise.contrast)
        for c, row in rows.items():
            if key + c in result["chunks"]:
                other = dynamics_report.outcomes(result, "paper", cond, c, seed=seed)["T"]
                row.verdicts[seed] = V.paired_proportions(dyn["T"], other, contrast=row.contrast)
    return [noise, *rows.values()]


def chapter4_replication_rows(result: dict) -> list[Row]:
    """Chapter 4's replication study (:mod:`replication`: every backbone over several noise draws, paired t over
    images): dynamics t=T − t=0 and − each control at σ, paper values, per backbone."""
    from . import replication

    cfg, out = result["config"], []
    for name, family in replication.families(result).items():
        claim = "noise" if "t=T − t=0" in name else "content"
        short = "t=T − t=0" if claim == "noise" else name.removesuffix(" (t=T)")
        row = Row(claim, 4, f"Gaussian σ={cfg['sigma']:g}: {name} (paper values, {cfg['draws']} noise draws)",
                  "replication-over-backbones-and-noise-draws", short)
        for b, v in zip(cfg["backbones"], family):
            row.verdicts[b] = replace(v, contrast=row.contrast, p_holm=None)  # Holm again over the claim (rows)
        out.append(row)
    return out


def chapter5_rows(result: dict, *, n_boot: int = 2000) -> list[Row]:
    """mCE of the dynamics (paper values) relative to t = 0, and the dynamics minus each control, per backbone."""
    from .corruption_study import load_study

    mce = Row("mce", 5, "mCE(T) / mCE(0) of the dynamics (paper values)", "what-we-found", "mCE(T) / mCE(0)")
    rows = {c: Row("content", 5, f"mCE: dynamics − {c} (paper values)", "what-we-found", f"mCE: dynamics − {c}")
            for c in CONTROLS}
    for seed, part in per_backbone(result).items():
        study = load_study(part)
        v = corruption_report.ratio_verdict(study, "paper: dynamics", summary="mCE", n_boot=n_boot)
        mce.verdicts[seed] = replace(v, contrast=mce.contrast)
        for c, row in rows.items():
            if f"paper: {c}" in study["correct"]:
                v = corruption_report.difference_verdict(study, "paper: dynamics", f"paper: {c}", summary="mCE",
                                                         n_boot=n_boot)
                row.verdicts[seed] = replace(v, contrast=row.contrast)
    return [mce, *rows.values()]


def chapter6_rows(result: dict) -> list[Row]:
    """At the main ε: worst-case robust accuracy, dynamics minus t = 0 and minus each control, per backbone."""
    rows, eps = {}, None
    for seed, part in per_backbone(result).items():
        eps = part["config"]["eps_main"]
        step = [v for v in robustness_report.timestep_family(part) if v.contrast.startswith(f"eps = {eps:g}:")]
        for v in step + robustness_report.control_family(part):
            claim = "adversarial" if v in step else "content"
            short = v.contrast.split(": ", 1)[-1].replace(" minus ", " − ").removesuffix(" (fixed point)")
            row = rows.setdefault(v.contrast, Row(claim, 6, f"robust accuracy, {v.contrast}", "verdicts", short))
            row.verdicts[seed] = replace(v, contrast=row.contrast, p_holm=None)
    return list(rows.values())


def rows(results: dict, *, n_boot: int = 2000) -> list[Row]:
    """Every row of the page from {chapter: result} (a chapter absent from ``results`` is left out), each claim's
    verdicts over all its rows and backbones Holm-corrected as one family."""
    makers = {4: lambda r: chapter4_replication_rows(r["replication"]) if "replication" in r else chapter4_rows(r),
              5: lambda r: chapter5_rows(r, n_boot=n_boot), 6: chapter6_rows}
    out = [row for ch in sorted(results) for row in makers[ch](results[ch])]
    for claim in CLAIMS:
        cells = [(row, seed) for row in out if row.claim == claim.key for seed in sorted(row.verdicts)]
        if cells:
            for (row, seed), v in zip(cells, V.holm_family([r.verdicts[s] for r, s in cells])):
                row.verdicts[seed] = v
    order = [c.key for c in CLAIMS]
    return sorted(out, key=lambda r: (order.index(r.claim), r.chapter))


def load_results(folder=None, *, load=None) -> dict:
    """{chapter: result} of the committed result files under ``folder`` (default ``data/results``), each read by
    ``load`` (default: sha256-checked :func:`weights.load_json_result`). Chapter 4's replication study
    (:data:`REPLICATION`), once committed, is its source (as ``result["replication"]``: every backbone over
    several noise draws) instead of the single draw of ``ch4_dynamics.json``. Replicate backbones in files of their own
    join their chapter as ``{"backbones": ...}`` (:data:`REPLICATES`): chapter 5's add to ``ch5_corruptions.json``;
    chapter 6's shared-suite files, once any exists, replace ``ch6_robustness.json`` (one design for every backbone)."""
    import pathlib

    from . import weights
    from .data import DATA_DIR

    folder, load = pathlib.Path(folder or DATA_DIR / "results"), load or weights.load_json_result
    out = {ch: load(folder / name) for ch, name in FILES.items() if (folder / name).exists()}
    if (folder / REPLICATION).exists():  # chapter 4's replication over backbones and noise draws supersedes one draw
        out[4] = {**out.get(4, {}), "replication": load(folder / REPLICATION)}
    for ch, (pattern, replaces) in REPLICATES.items():
        extra = sorted(folder.glob(pattern))
        if not extra:
            continue
        parts = {} if replaces or ch not in out else per_backbone(out[ch])
        for path in extra:
            parts.update(per_backbone(load(path)))
        out[ch] = {"config": parts[min(parts)]["config"], "backbones": {str(k): v for k, v in sorted(parts.items())}}
    return out


def source_files(folder=None) -> dict[int, list[str]]:
    """{chapter: names of the result files :func:`load_results` builds its verdicts from}: chapter 4's replication
    study instead of its single-draw file once committed; chapter 5 with its replicate backbones' files; chapter 6's
    shared-suite files instead of its first study once any exists."""
    import pathlib

    from .data import DATA_DIR

    folder = pathlib.Path(folder or DATA_DIR / "results")
    out = {ch: [name] for ch, name in FILES.items() if (folder / name).exists()}
    if (folder / REPLICATION).exists():
        out[4] = [REPLICATION]
    for ch, (pattern, replaces) in REPLICATES.items():
        extra = [p.name for p in sorted(folder.glob(pattern))]
        if extra:
            out[ch] = extra if replaces else out.get(ch, []) + extra
    return out


# ----------------------------------------------------------------------------- the page
def cell(v: V.Verdict | None) -> str:
    """One table cell: the verdict word, the estimate and interval, n, MDE and Holm p ('not tested' for None)."""
    if v is None:
        return "not tested"
    if v.effect == "withheld":
        return f"**no comparison**: {_escape(v.withheld)} (n = {v.n:,})"  # no estimate: it would read as one
    return (f"**{V.short_verdict(v)}** {v._interval(v.unit)} (n = {v.n:,}, MDE {v.mde:.{v.digits}f}, "
            f"Holm p {V.format_p(v.p_holm)})")


def holds(rows_: list[Row], backbone: int) -> str:
    """Whether a claim's contrasts are all gains after correction on ``backbone``: 'yes', 'no', 'not tested', or
    'no comparison' when none is a non-gain but some are withheld (e.g. an unconverged attack)."""
    tested = [r.verdicts[backbone] for r in rows_ if backbone in r.verdicts]
    if not tested:
        return "not tested"
    if any(v.effect not in ("gain", "withheld") for v in tested):
        return "no"
    return "yes" if all(v.effect == "gain" for v in tested) else "no comparison"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def claim_table(claim: Claim, rows_: list[Row], *, backbones=BACKBONES) -> str:
    """A Markdown table for one claim: one line per contrast (with a link to its section), one column per backbone,
    and a last line saying on which backbones the claim holds under the rule."""
    head = "| contrast | " + " | ".join(f"backbone {b}" for b in backbones) + " |"
    lines = [head, "|" + "---|" * (len(backbones) + 1)]
    for r in rows_:
        link = f'<a href="{r.link}">chapter {r.chapter}</a>'
        lines.append(f"| {_escape(r.contrast)} ({link}) | "
                     + " | ".join(cell(r.verdicts.get(b)) for b in backbones) + " |")
    lines.append("| **the claim holds** | " + " | ".join(f"**{holds(rows_, b)}**" for b in backbones) + " |")
    return "\n".join(lines)


def page(rows_: list[Row], *, backbones=BACKBONES) -> str:
    """The page's Markdown: per claim, Predify's claim in bold and its table (see :func:`claim_table`)."""
    parts = []
    for claim in CLAIMS:
        mine = [r for r in rows_ if r.claim == claim.key]
        parts.append(f"**Claim: {claim.text}.**\n")
        parts.append(claim_table(claim, mine, backbones=backbones) if mine else "No committed result tests it.")
        parts.append("")
    return "\n".join(parts)


def summary_table(rows_: list[Row], *, backbones=BACKBONES) -> str:
    """One line per claim: on which backbones it holds under the rule (Markdown table)."""
    lines = ["| Predify's claim | " + " | ".join(f"backbone {b}" for b in backbones) + " |",
             "|" + "---|" * (len(backbones) + 1)]
    for claim in CLAIMS:
        mine = [r for r in rows_ if r.claim == claim.key]
        lines.append(f"| {claim.text} | " + " | ".join(holds(mine, b) for b in backbones) + " |")
    return "\n".join(lines)


def claim_plot(claim: Claim, rows_: list[Row]):
    """A claim's forest plot: every contrast on every backbone (one panel per no-effect value and unit)."""
    from . import plotting

    family = [replace(v, contrast=f"ch. {r.chapter}, backbone {b}: {r.short}")
              for r in rows_ if r.claim == claim.key for b, v in sorted(r.verdicts.items())]
    if not family:
        return None
    return plotting.family_plot(family, title=claim.text)


def status(row: Row, *, backbones=BACKBONES) -> str:
    """A contrast's status under :data:`replication.RULE` from its (Holm-corrected) verdicts per backbone. While a
    backbone is untested it is undecided, unless the tested ones already disagree in direction."""
    from .replication import claim_status

    tested = [b for b in backbones if b in row.verdicts]
    if not tested:
        return "not tested"
    said = claim_status([row.verdicts[b] for b in tested], tested)
    missing = [str(b) for b in backbones if b not in row.verdicts]
    effects = {row.verdicts[b].effect for b in tested} - {"none", "withheld"}
    if not missing or len(effects) > 1:
        return said
    return (f"undecided until backbone{'s' * (len(missing) > 1)} {', '.join(missing)} {'is' if len(missing) == 1 else 'are'}"
            f" tested; so far {said.split(': ', 1)[1]}")


def replication_lines(rows_: list[Row], *, backbones=BACKBONES) -> list[str]:
    """One line per contrast: its status under the rule, then every tested backbone's estimate, interval and MDE."""
    lines = []
    for r in rows_:
        per = "; ".join(f"backbone {b}: {v._interval(v.unit)} (n = {v.n:,}, MDE {v.mde:.{v.digits}f}, "
                        f"Holm p {V.format_p(v.p_holm)})" for b, v in sorted(r.verdicts.items()))
        lines.append(f"{r.contrast}: {status(r, backbones=backbones)}. {per}")
    return lines


# ----------------------------------------------------------------------------- lines other chapters print
def shrinkage_lines(result: dict) -> list[str]:
    """Chapter 4 at the paper values, for every noise condition: the dynamics against t = 0 and against the
    fixed-point rescale (activations shrunk, no prediction), from the chapter's Holm family, and what follows."""
    family = dynamics_report.main_family(result, "paper")
    lines = []
    for cond in dynamics_report.conditions(result):
        if cond[0] == "clean":
            continue
        label = dynamics_report.study.label(cond)
        gain = corruption_report.find(family, f"{label}: dynamics t=T − t=0")
        rescale = corruption_report.find(family, f"{label}: dynamics − {dynamics_report.study.CONTROL_NAMES['rescale']}"
                                                 " (t=T)")
        if gain.effect != "gain":
            says = "no gain over t = 0 to explain"
        elif rescale.effect == "gain":
            says = "the dynamics beat the rescale, so shrinking activations does not explain the gain"
        else:
            says = "no detectable advantage over the rescale, so shrinking activations may explain the gain"
        lines.append(f"{label}: dynamics − t = 0 {gain._interval(gain.unit)} ({V.short_verdict(gain)}), dynamics − "
                     f"rescale {rescale._interval(rescale.unit)} ({V.short_verdict(rescale)}): {says}")
    return lines


def replicate_lines(result: dict) -> list[str]:
    """Chapter 4 at the main σ, per backbone: dynamics − t = 0 and dynamics − zero-prediction (uncorrected)."""
    rows_ = chapter4_rows(result)
    noise, zero = rows_[0], next(r for r in rows_ if r.short == "dynamics − zero")
    return [f"backbone {b}: dynamics − t = 0 {noise.verdicts[b]._interval('points')} "
            f"({V.short_verdict(noise.verdicts[b])}), dynamics − zero-prediction "
            f"{zero.verdicts[b]._interval('points')} ({V.short_verdict(zero.verdicts[b])}; uncorrected)"
            for b in sorted(zero.verdicts) if b in noise.verdicts]
