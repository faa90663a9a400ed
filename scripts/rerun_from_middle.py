#!/usr/bin/env python
"""Check that a chapter re-runs from its middle: execute it top to bottom in smoke mode, then execute again, in
the same kernel, every cell from ``--from`` (default: the first cell after the setup cells) to the end.

    PCNET_SMOKE=1 python scripts/rerun_from_middle.py book/04_dynamics.ipynb [--from 7]

A cell that fails on the second pass (a name that changed meaning, a consumed iterator, ...) is reported with
its index and the error; the exit status is non-zero.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def first_after_setup(nb) -> int:
    """Index of the first code cell after the parameters cell and the setup cell that follows it."""
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    params = next(i for i in code if "parameters" in c_tags(nb.cells[i]))
    after = [i for i in code if i > params]
    return after[1] if len(after) > 1 else after[0]


def c_tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


def rerun(path: pathlib.Path, start: int | None) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    start = first_after_setup(nb) if start is None else start
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            client.execute_cell(cell, i)
        print(f"[rerun] {path.name}: top to bottom ok; re-running cells {start}..{len(nb.cells) - 1}")
        for i in range(start, len(nb.cells)):
            try:
                client.execute_cell(nb.cells[i], i)
            except CellExecutionError as err:
                print(f"[rerun] cell {i} failed on the second pass:\n{err}", file=sys.stderr)
                return 1
    print(f"[rerun] {path.name}: re-ran from cell {start} without errors")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=pathlib.Path)
    parser.add_argument("--from", dest="start", type=int, default=None, help="first cell of the second pass")
    args = parser.parse_args(argv)
    os.environ.setdefault("PCNET_SMOKE", "1")
    return rerun(args.notebook.resolve(), args.start)


if __name__ == "__main__":
    sys.exit(main())
