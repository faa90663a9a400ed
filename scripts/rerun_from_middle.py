"""Run a chapter top to bottom in one kernel, then re-execute it from a middle cell to the end in the same kernel.

Checks issue 9's rule that every cell can be re-run (no notebook variable changes meaning). Usage:

    PYTHONPATH=$PWD python scripts/rerun_from_middle.py book/05_corruptions.ipynb --from 4 [--smoke]

``--from`` names the cell id where the second pass starts (the first cell after the setup cells).
Exits non-zero, naming the cell, if any cell fails in either pass.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys


def rerun(path: pathlib.Path, *, start: str, smoke: bool, timeout: int = 1800) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    ids = [c.get("id") for c in nb.cells]
    if start not in ids:
        raise SystemExit(f"--from {start!r}: no such cell id in {path}; ids are {ids}")
    if smoke:
        os.environ["PCNET_SMOKE"] = "1"  # the kernel inherits it
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            client.execute_cell(cell, i)
        print(f"[rerun] {path}: first pass done; re-executing from cell {start!r}", flush=True)
        for i in range(ids.index(start), len(nb.cells)):
            client.execute_cell(nb.cells[i], i)
    print(f"[rerun] {path}: re-ran cells {start!r}..end without errors", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("notebook", type=pathlib.Path)
    p.add_argument("--from", dest="start", required=True, help="cell id where the second pass starts")
    p.add_argument("--smoke", action="store_true", help="set PCNET_SMOKE=1 (tiny parameters)")
    args = p.parse_args(argv)
    rerun(args.notebook, start=args.start, smoke=args.smoke)


if __name__ == "__main__":
    main(sys.argv[1:])
