"""Chapters re-run from their middle (after the setup cells) in the same kernel without errors (smoke mode).

Slow (each chapter runs twice): needs `--run-chapters`, like tests/test_chapters.py.
"""
import pathlib

import pytest

import rerun_middle

ROOT = pathlib.Path(__file__).resolve().parent.parent
RERUN = ["book/06_adversarial.ipynb"]  # chapters checked so far (the lead adds the others)


@pytest.mark.parametrize("chapter", RERUN)
def test_chapter_reruns_from_the_middle(chapter, request):
    if not request.config.getoption("--run-chapters"):
        pytest.skip("chapter runs need --run-chapters")
    rerun_middle.rerun(ROOT / chapter)


def test_first_cell_after_setup_skips_hidden_setup():
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("A = 1"),
                                         nbformat.v4.new_code_cell("import os"), nbformat.v4.new_markdown_cell("x"),
                                         nbformat.v4.new_code_cell("print(A)")])
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.cells[2].metadata["tags"] = ["remove-input"]
    assert rerun_middle.first_after_setup(nb) == 4
