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


def _module_graph(root):
    """pcnet module -> the pcnet modules it imports anywhere in the file (top level or inside functions).

    ``from . import x`` is an edge to module ``x``; an edge to a package (``import pcnet``) stands for the modules
    its ``__init__`` imports, so a module that imports its own package is caught too."""
    files = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in sorted(root.rglob("*.py"))}
    direct = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                subs = {f"{base}.{a.name}" for a in node.names} & files.keys()
                found |= subs if subs else {base}
        direct[name] = {m for m in found if m in files and m != name}
    packages = {n for n, p in files.items() if p.name == "__init__.py"}

    def expand(targets, seen=()):
        out = set()
        for m in targets:
            if m in packages and m not in seen:
                out |= expand(direct[m], (*seen, m))
            elif m not in packages:
                out.add(m)
        return out
    return {n: expand(d) for n, d in direct.items() if n not in packages}


def _cycles(graph):
    """Every set of modules that import each other (strongly connected components of more than one module)."""
    order, low, stack, found, counter = {}, {}, [], [], [0]

    def visit(v):
        order[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = []
            while component[-1:] != [v]:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))
    for v in sorted(graph):
        if v not in order:
            visit(v)
    return found


def test_no_import_cycles_among_pcnet_modules():
    graph = _module_graph(pathlib.Path(pcnet.__file__).parent)
    assert len(graph) >= 40, sorted(graph)  # the scan sees the modules
    assert "pcnet.experiments.train_scale" in graph["pcnet.experiments.train"]  # and train.main's lazy import
    assert graph["pcnet.experiments.published"] >= {"pcnet.experiments.corruption_names"}
    assert _cycles(graph) == [], "modules that import each other (move the shared code into a module below both)"


def test_cycle_scan_catches_a_cycle_a_lazy_import_and_a_package_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def g():\n    from .a import f\n")  # a lazy import still makes a cycle
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import pkg\n")  # via the package: c -> a
    (pkg / "sub" / "d.py").write_text("from ..sub import c\n")
    graph = _module_graph(pkg)
    assert graph["pkg.sub.c"] == {"pkg.a"} and graph["pkg.sub.d"] == {"pkg.sub.c"}
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]
    (pkg / "a.py").write_text("import pkg.sub.c\n")  # a -> c -> (pkg) -> a
    assert _cycles(_module_graph(pkg)) == [["pkg.a", "pkg.sub.c"]]
