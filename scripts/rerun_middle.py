#!/usr/bin/env python
"""Run a chapter top to bottom in smoke mode, then re-run it from a middle cell in the same kernel.

    python scripts/rerun_middle.py book/06_adversarial.ipynb            # from the first cell after the setup
    python scripts/rerun_middle.py book/06_adversarial.ipynb --from 9   # from code cell index 9 of the notebook

A chapter passes when both passes run without an error: no cell depends on a name that a later cell
changes the meaning of, and every cell can be executed again. The setup is the parameters cell and the
hidden (``remove-input``) code cells right after it.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

import nbformat
from nbclient import NotebookClient


def first_after_setup(nb) -> int:
    """Index of the first cell after the parameters cell and the hidden code cells right after it."""
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    i = next(i for i, t in enumerate(tags) if "parameters" in t) + 1
    while i < len(nb.cells) and (nb.cells[i].cell_type != "code" or "remove-input" in tags[i]):
        i += 1
    return i


def rerun(notebook: pathlib.Path, *, start: int | None = None, timeout: int = 600) -> int:
    """Execute every cell, then cells ``start``.. again; raises CellExecutionError on a failure.
    Returns the index re-run from."""
    nb = nbformat.read(notebook, as_version=4)
    start = first_after_setup(nb) if start is None else start
    os.environ["PCNET_SMOKE"] = "1"
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        for index in range(start, len(nb.cells)):
            client.execute_cell(nb.cells[index], index)
    return start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=pathlib.Path)
    parser.add_argument("--from", dest="start", type=int, default=None, help="cell index to re-run from")
    args = parser.parse_args(argv)
    start = rerun(args.notebook.resolve(), start=args.start)
    print(f"{args.notebook}: ran top to bottom, then again from cell {start}: no errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
