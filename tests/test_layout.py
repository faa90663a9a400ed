"""The package boundary: the core (pcnet/*.py) never imports the book's helpers (pcnet.experiments)."""
import ast
import pathlib
import subprocess
import sys

import pcnet

CORE = sorted(pathlib.Path(pcnet.__file__).parent.glob("*.py"))


def _imports(path):
    """Absolute module names imported by a file (relative ones resolved against pcnet)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "pcnet" + ("." + node.module if node.module else "") if node.level else node.module
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def test_core_modules_never_import_experiments():
    assert len(CORE) >= 8, CORE  # the scan sees the core modules
    offenders = {p.name: [n for n in _imports(p) if n.startswith("pcnet.experiments")] for p in CORE}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_scan_would_catch_a_relative_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from .experiments import data\nfrom . import experiments\n")
    assert [n for n in _imports(bad) if n.startswith("pcnet.experiments")]


def test_core_runs_with_experiments_and_book_extras_unavailable():
    """With pcnet.experiments blocked, the core builds and runs a PredNet and loads none of the book's extras."""
    code = r"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("pcnet.experiments"):
            raise ModuleNotFoundError(f"blocked: {name}", name=name)
sys.meta_path.insert(0, Block())
import torch, pcnet
from torch import nn
model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
net = pcnet.predify(model, layers=["1", "3"], input_shape=(1, 8, 8))
print(tuple(net(torch.rand(2, 1, 8, 8), timesteps=2).shape))
extras = ("matplotlib", "seaborn", "pandas", "scipy", "skimage", "cv2", "foolbox", "torchattacks", "papermill")
print(sorted(m for m in sys.modules if m.split(".")[0] in extras))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["(3, 2, 3)", "[]"], out.stdout


def test_typed_marker_and_api_page_cover_the_package():
    root = pathlib.Path(pcnet.__file__).parent
    assert (root / "py.typed").is_file()
    api = (root.parent / "book" / "api.md").read_text()
    helpers = sorted(p.stem for p in (root / "experiments").glob("*.py") if p.stem != "__init__")
    missing = [m for m in helpers if f"automodule:: pcnet.experiments.{m}\n" not in api]
    assert not missing, f"book/api.md lacks these pcnet.experiments modules: {missing}"
    for core in ("dynamics", "fast", "decoders", "hparams", "wiring"):
        assert f"automodule:: pcnet.{core}\n" in api
