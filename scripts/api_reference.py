"""Write docs/API.md, the API reference that reads on GitHub without a build, from pcnet's docstrings.

    .venv/bin/python scripts/api_reference.py            # rewrite docs/API.md
    .venv/bin/python scripts/api_reference.py --check    # exit 1 if docs/API.md is not current

``tests/test_api_reference.py`` fails when the committed file differs from what this writes (run it after changing
a docstring or a signature). Sphinx roles (:func:`x`) become code spans; nothing else is rewritten.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import pathlib
import pkgutil
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "API.md"
CORE_FUNCTIONS = ("predify", "feedback_loss", "feedback_step", "load_feedback", "rescaled_forward", "show_source")
CORE_CLASSES = ("PredNet", "Trace")
CORE_MODULES = ("dynamics", "fast", "decoders", "hparams", "wiring", "saving", "controls")
ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|obj|exc):`~?([^`]+)`")


def _doc(obj) -> str:
    text = inspect.getdoc(obj) or ""
    return ROLE.sub(r"`\1`", text).replace("``", "`")


def _signature(name: str, obj) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        sig = "(...)"
    sig = sig.replace(str(ROOT), "<repo>").replace(str(pathlib.Path.home()), "~")  # the same on every machine
    return re.sub(r" at 0x[0-9a-f]+", "", f"{name}{sig}")


def _entry(name: str, obj, level: str = "###") -> list[str]:
    return [f"{level} `{_signature(name, obj)}`", "", _doc(obj) or "(no docstring)", ""]


def own_methods(cls) -> list[str]:
    """Public methods and properties a class defines itself (not those it inherits), in source order."""
    return [n for n, v in vars(cls).items() if not n.startswith("_") and (inspect.isfunction(v) or
            isinstance(v, (property, staticmethod, classmethod)))]


def _class(name: str, cls) -> list[str]:
    lines = [f"### class `{name}`", "", _doc(cls), ""]
    bases = [b.__module__ + "." + b.__qualname__ for b in cls.__bases__ if b is not object]
    if bases:
        lines += [f"Bases: {', '.join(f'`{b}`' for b in bases)}. Its own methods:", ""]
    for method in own_methods(cls):
        value = inspect.getattr_static(cls, method)
        func = value.fget if isinstance(value, property) else getattr(cls, method)
        lines += _entry(f"{name}.{method}", func, level="####") if not isinstance(value, property) else \
            [f"#### property `{name}.{method}`", "", _doc(func) or "(no docstring)", ""]
    return lines


def _members(module) -> list[tuple[str, object]]:
    """Public functions and classes defined in ``module`` itself, in source order."""
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            out.append((name, obj))
    return sorted(out, key=lambda item: inspect.getsourcelines(item[1])[1])


def _module(module) -> list[str]:
    lines = [f"## `{module.__name__}`", "", _doc(module), ""]
    for name, obj in _members(module):
        lines += _class(name, obj) if inspect.isclass(obj) else _entry(name, obj)
    return lines


def render() -> str:
    import pcnet
    import pcnet.experiments

    lines = ["# pcnet API reference", "",
             "Generated from the docstrings by `scripts/api_reference.py` (do not edit by hand; "
             "`tests/test_api_reference.py` checks that it is current). The site's version is `book/api.md`.", "",
             "## The core: `pcnet`", "", _doc(pcnet), ""]
    for name in CORE_FUNCTIONS:
        lines += _entry(f"pcnet.{name}", getattr(pcnet, name))
    for name in CORE_CLASSES:
        lines += _class(f"pcnet.{name}", getattr(pcnet, name))
    for name in CORE_MODULES:
        lines += _module(importlib.import_module(f"pcnet.{name}"))
    lines += ["# The book's helpers: `pcnet.experiments`", "", _doc(pcnet.experiments), ""]
    names = sorted(m.name for m in pkgutil.iter_modules(pcnet.experiments.__path__))
    for name in names:
        lines += _module(importlib.import_module(f"pcnet.experiments.{name}"))
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/api_reference.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/API.md is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.exists() and OUT.read_text() == text
        print("docs/API.md is current" if current else "docs/API.md is stale: run python scripts/api_reference.py")
        return 0 if current else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_name(".API.md.tmp")
    tmp.write_text(text)
    tmp.replace(OUT)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
