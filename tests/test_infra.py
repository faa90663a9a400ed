"""The book's plumbing: dependency lists, table of contents, Colab links, parameters cells, runner."""
import json
import pathlib
import re
import subprocess
import sys

import nbformat
import pytest
import yaml

import run_chapters

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHAPTER_NAMES = ["01_predictive_coding", "02_backbone", "03_feedback", "04_dynamics",
                 "05_corruptions", "06_adversarial", "07_paper_scale", "08_findings"]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def _name(requirement: str) -> str:
    """Distribution name of a requirement string, normalised (PEP 503)."""
    name = re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_pyproject_and_environment_yml_list_the_same_packages():
    project = _pyproject()["project"]
    pip_names = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["book"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_alias = {"pytorch": "torch"}
    env_names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            env_names |= {_name(r) for r in dep["pip"] if not r.startswith("-e")}
        else:
            env_names.add(conda_alias.get(_name(dep), _name(dep)))
    env_names -= {"python", "pip"}
    assert pip_names == env_names, (f"only in pyproject: {sorted(pip_names - env_names)}; "
                                    f"only in environment.yml: {sorted(env_names - pip_names)}")


def test_dependencies_declare_minimum_versions_only():
    project = _pyproject()["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["book"]:
        assert "==" not in req and "~=" not in req, f"{req}: declare minimum versions only"
        if _name(req) in ("torch", "torchvision"):
            assert "<" not in req, f"{req}: never cap torch (Colab brings its own)"


def test_toc_lists_intro_and_the_seven_chapters_in_order():
    files = run_chapters.toc_files()
    assert files[0] == "book/intro"
    assert [f for f in files if f.startswith("book/0")] == [f"book/{n}" for n in CHAPTER_NAMES]
    for f in files:
        found = [p for p in (ROOT / (f + ".ipynb"), ROOT / (f + ".md")) if p.exists()]
        assert found, f"_toc.yml lists {f}, but neither {f}.ipynb nor {f}.md exists"


def test_build_config_is_offline_and_from_executed_copies():
    assert CONFIG["execute"]["execute_notebooks"] == "off"
    sphinx = CONFIG["sphinx"]["config"]
    assert sphinx["mathjax_path"] == "mathjax/tex-svg.js"
    assert "book/_static" in sphinx["html_static_path"]
    assert {"amsmath", "dollarmath"} <= set(CONFIG["parse"]["myst_enable_extensions"])
    assert CONFIG["bibtex_bibfiles"] == ["book/references.bib"]


def _colab_url(notebook: str) -> str:
    """The Colab URL sphinx-book-theme builds: colab/github/<org>/<repo>/blob/<branch>/<path_to_book>/<file>."""
    repo = CONFIG["repository"]
    org_repo = repo["url"].removeprefix("https://github.com/").strip("/")
    book_path = repo.get("path_to_book", "").strip("/")
    path = f"{book_path}/{notebook}" if book_path else notebook
    return f"{CONFIG['launch_buttons']['colab_url']}/github/{org_repo}/blob/{repo['branch']}/{path}"


@pytest.mark.parametrize("name", CHAPTER_NAMES)
def test_colab_url_points_at_an_existing_notebook(name):
    url = _colab_url(f"book/{name}.ipynb")
    assert url.startswith("https://colab.research.google.com/github/pcnet-book/pcnet/blob/main/")
    path = url.split("/blob/main/", 1)[1]
    assert (ROOT / path).is_file(), f"{url} points at {path}, which is not in the repository"
    built = ROOT / "_build" / "html" / "book" / f"{name}.html"
    if built.exists():  # the site that was built links exactly this URL
        assert url in built.read_text()


def _notebooks():
    return [ROOT / "book" / f"{n}.ipynb" for n in CHAPTER_NAMES]


@pytest.mark.parametrize("path", _notebooks(), ids=CHAPTER_NAMES)
def test_chapter_has_one_flat_uppercase_parameters_cell_with_smoke_switch(path):
    assert path.exists(), f"{path} is listed in _toc.yml but missing"
    params = run_chapters.declared_parameters(path)  # raises unless exactly one flat UPPERCASE cell
    assert params, f"{path}: the parameters cell declares nothing"
    cell = run_chapters.parameters_cells(json.loads(path.read_text()))[0]
    assert "PCNET_SMOKE" in "".join(cell["source"]), f"{path}: the parameters cell must read PCNET_SMOKE"


@pytest.mark.parametrize("path", _notebooks(), ids=CHAPTER_NAMES)
def test_chapter_first_code_cell_installs_only_on_colab(path):
    nb = json.loads(path.read_text())
    first = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    assert 'if "google.colab" in sys.modules' in first
    assert "https://github.com/pcnet-book/pcnet" in first
    assert "torch" not in first.replace("pcnet", ""), "the Colab cell must not touch Colab's torch"
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert cell["metadata"].get("tags") == ["remove-cell"], "every chapter hides its Colab cell the same way"


def _tiny_notebook(tmp_path, source="SMOKE = False\nN = 3 if SMOKE else 5", body="print(N * 2)"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(source)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    path = tmp_path / "book" / "tiny.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_declared_parameters_and_flatness(tmp_path):
    path = _tiny_notebook(tmp_path)
    assert run_chapters.declared_parameters(path) == {"SMOKE": "False", "N": "3 if SMOKE else 5"}
    with pytest.raises(run_chapters.ParameterError, match="not UPPERCASE"):
        run_chapters.declared_parameters(_tiny_notebook(tmp_path, source="lr = 0.1"))
    with pytest.raises(run_chapters.ParameterError, match="flat"):
        run_chapters.declared_parameters(_tiny_notebook(tmp_path, source="for i in range(2):\n    X = i"))


def test_runner_rejects_unknown_parameters(tmp_path):
    path = _tiny_notebook(tmp_path)
    with pytest.raises(run_chapters.ParameterError, match="unknown parameter.*EPOCS.*declares N, SMOKE"):
        run_chapters.run_chapter(path, out=tmp_path / "out", parameters={"EPOCS": 2}, root=tmp_path)
    assert not (tmp_path / "out").exists()
    # The command line refuses before running anything (exit status 2).
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_chapters.py"), str(path),
                           "--out", str(tmp_path / "out2"), "-p", "EPOCS=2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown parameter(s) EPOCS" in proc.stderr


def test_runner_executes_with_parameters_and_shows_failing_cell(tmp_path):
    path = _tiny_notebook(tmp_path)
    seconds = run_chapters.run_chapter(path, out=tmp_path / "out", parameters={"N": 21}, root=tmp_path)
    assert seconds > 0
    executed = json.loads((tmp_path / "out" / "book" / "tiny.ipynb").read_text())
    assert "42" in "".join(executed["cells"][-1]["outputs"][0]["text"])
    bad = _tiny_notebook(tmp_path, body="raise ValueError('boom from cell')")
    with pytest.raises(run_chapters.ChapterFailed, match=r"(?s)failed in cell \d+.*raise ValueError.*boom"):
        run_chapters.run_chapter(bad, out=tmp_path / "out", root=tmp_path)


def test_smoke_switch_reaches_the_kernel(tmp_path):
    path = _tiny_notebook(tmp_path, source='import os\nSMOKE = os.environ.get("PCNET_SMOKE") == "1"',
                          body="print('smoke' if SMOKE else 'full')")
    for smoke, word in ((True, "smoke"), (False, "full")):
        run_chapters.run_chapter(path, out=tmp_path / "out", smoke=smoke, root=tmp_path)
        executed = json.loads((tmp_path / "out" / "book" / "tiny.ipynb").read_text())
        assert "".join(executed["cells"][-1]["outputs"][0]["text"]).strip() == word


def test_bibliography_has_the_keys_the_team_cites():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = re.findall(r"@\w+\{([^,]+),", bib)
    assert len(keys) == len(set(keys)), "duplicate bibtex keys"
    for key in ("choksi2021predify", "rao1999predictive", "huang2020neural", "hendrycks2019benchmarking",
                "athalye2018obfuscated", "tramer2020adaptive", "croce2020reliable", "croce2022evaluating",
                "wang2021tent", "schneider2020improving", "xiao2017fashion", "krizhevsky2009learning",
                "simonyan2015very", "tan2019efficientnet", "he2016deep"):
        assert key in keys


def test_cited_keys_exist():
    keys = set(re.findall(r"@\w+\{([^,]+),", (ROOT / "book" / "references.bib").read_text()))
    sources = list((ROOT / "book").glob("*.md")) + list((ROOT / "book").glob("*.ipynb"))
    cited = set()
    for f in sources:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", f.read_text()):
            cited |= {k.strip() for k in group.split(",")}
    assert cited, "the book cites nothing"
    assert cited <= keys, f"cited but not in references.bib: {sorted(cited - keys)}"


def test_runner_strips_widget_outputs_and_state(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
                        "application/vnd.jupyter.widget-view+json": {"model_id": "abc"},
                        "text/plain": "  0%|          | 0/3"}),
                    nbformat.v4.new_output("stream", name="stdout", text="kept\n")]
    nb.cells = [cell]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    path = tmp_path / "w.ipynb"
    nbformat.write(nb, path)
    assert run_chapters.strip_widgets(path) == 1
    out = json.loads(path.read_text())
    assert "widgets" not in out["metadata"]
    assert [o["output_type"] for o in out["cells"][0]["outputs"]] == ["stream"]


def test_runner_reports_the_sample_sizes_of_printed_verdicts(tmp_path):
    """The build log's sample sizes come from the verdict lines themselves (real Verdict strings, not a copy)."""
    import torch
    from pcnet.experiments.verdicts import holm_family, paired_proportions
    a, b = torch.tensor([1, 1, 0, 1] * 50, dtype=torch.bool), torch.tensor([1, 0, 0, 1] * 50, dtype=torch.bool)
    family = holm_family([paired_proportions(a, b, contrast="x"), paired_proportions(a[:40], b[:40], contrast="y")])
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(...)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="\n".join(f"- {v}" for v in family) + "\n"),
                    nbformat.v4.new_output("stream", name="stdout", text=f"{family[0]}\nno verdict here (n = 5)\n"),
                    nbformat.v4.new_output("display_data", data={"text/markdown": f"- {family[1]}",
                                                                 "text/plain": "<IPython.core.display.Markdown object>"})]
    nb.cells = [cell, nbformat.v4.new_markdown_cell("(n = 7, MDE 1.0 in prose is not counted)")]
    path = tmp_path / "v.ipynb"
    nbformat.write(nb, path)
    sizes = run_chapters.verdict_sizes(path)
    assert sorted(sizes) == [40, 200] and sizes[200]["verdicts"] == 2 and sizes[40]["verdicts"] == 2
    assert sizes[200]["mde"] == [round(family[0].mde, 2)] * 2  # printed with two decimals
    assert run_chapters.sizes_line(sizes).startswith("2 verdicts at n = 40 (MDE ")
    assert run_chapters.sizes_line({3: {"verdicts": 1, "mde": [1.5, 1.5]}}) == "1 verdict at n = 3 (MDE 1.5 to 1.5)"
    assert "2 verdicts at n = 200" in run_chapters.sizes_line(sizes)
    assert run_chapters.sizes_line({}) == "no verdict printed"
