#!/usr/bin/env python
"""Set up a Colab runtime for the book; the first cell of every chapter runs it after cloning:

    !git clone -q --depth 1 https://github.com/pcnet-book/pcnet /content/pcnet-book
    %run /content/pcnet-book/scripts/colab_setup.py

It installs pcnet *editable* from the clone (so ``data/`` with the committed weights is found) with the
slim ``[colab]`` extra, which leaves Colab's torch, torchvision, ipykernel and Jupyter stack as they are,
and chapter 6's torchattacks without its dependencies (it pins an old requests). Then it makes the new
install importable in the running kernel (no restart) and checks that ``import pcnet`` is the clone's
package: the clone folder is deliberately not named ``pcnet``, because Colab has ``/content`` on
``sys.path`` and a folder ``/content/pcnet`` would shadow the package as an empty namespace package.
"""
from __future__ import annotations

import importlib
import pathlib
import site
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
TORCHATTACKS = "torchattacks>=3.5"


def install(repo: pathlib.Path = REPO, *, python: str = sys.executable, quiet: bool = True) -> None:
    """pip install -e "<repo>[colab]" and torchattacks (--no-deps) into ``python``'s environment."""
    pip = [python, "-m", "pip", "install", "--progress-bar", "off", *(["-q"] if quiet else [])]
    subprocess.run([*pip, "-e", f"{repo}[colab]"], check=True)
    subprocess.run([*pip, "--no-deps", TORCHATTACKS], check=True)


def activate() -> None:
    """Make what pip just installed importable in this process: run pcnet's editable-install .pth hook
    (Python reads .pth files only at start-up) and drop stale import caches."""
    for sitedir in [*site.getsitepackages(), site.getusersitepackages()]:
        for pth in sorted(pathlib.Path(sitedir).glob("*pcnet*.pth")):
            site.addpackage(sitedir, pth.name, None)
    for name in [m for m in sys.modules if m == "pcnet" or m.startswith("pcnet.")]:
        del sys.modules[name]  # e.g. a namespace package `pcnet` imported before the install
    importlib.invalidate_caches()


def check(repo: pathlib.Path = REPO):
    """Import pcnet and its experiments; raise ImportError with the fix unless they come from ``repo``."""
    import pcnet

    found = getattr(pcnet, "__file__", None)
    if found is None or pathlib.Path(found).resolve().parent != (repo / "pcnet").resolve():
        where = found or list(getattr(pcnet, "__path__", []))
        raise ImportError(f"`import pcnet` found {where}, not {repo / 'pcnet'}: a folder named pcnet on sys.path "
                          f"shadows the package. Delete or rename it (on Colab: !rm -rf /content/pcnet), then rerun "
                          f"this cell.")
    from pcnet import dynamics  # noqa: F401
    from pcnet.experiments import data
    if data.DATA_DIR.resolve() != (repo / "data").resolve():
        raise ImportError(f"pcnet uses data from {data.DATA_DIR}, not {repo / 'data'}; unset PCNET_DATA")
    return pcnet


def main() -> None:
    install()
    activate()
    pcnet = check()
    import torch

    device = "GPU " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no GPU runtime)"
    print(f"pcnet ready from {pathlib.Path(pcnet.__file__).parent}; torch {torch.__version__}; {device}")


if __name__ == "__main__":
    main()
