"""Every chapter of _toc.yml executed once in smoke mode (PCNET_SMOKE=1) with papermill.

Run with `pytest tests/test_chapters.py --run-chapters` (`make test` does). The executed copies go
to `_build/src` (see scripts/run_chapters.py), from which `make test` then builds the site.
"""
import json
import pathlib
import time

import pytest

import run_chapters

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHAPTERS = [f for f in run_chapters.toc_files() if f != run_chapters.toc_files()[0]
            and not (ROOT / (f + ".md")).exists()]
TIMINGS = {}


@pytest.fixture(scope="session")
def chapters_out(request):
    if not request.config.getoption("--run-chapters"):
        pytest.skip("chapter runs need --run-chapters (make test passes it)")
    out = pathlib.Path(request.config.getoption("--chapters-out")).resolve()
    run_chapters.prepare_source(out)
    yield out
    if TIMINGS:
        (out / "timings.json").write_text(json.dumps(
            {"mode": "smoke", "seconds": TIMINGS, "total": sum(TIMINGS.values())}, indent=2) + "\n")
        print(f"\nchapter smoke runs: {sum(TIMINGS.values()):.1f} s in total")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_runs_in_smoke_mode(chapter, chapters_out):
    notebook = ROOT / (chapter + ".ipynb")
    assert notebook.exists(), f"_toc.yml lists {chapter} but {notebook} does not exist"
    start = time.perf_counter()
    failure = None
    try:
        seconds = run_chapters.run_chapter(notebook, out=chapters_out, smoke=True)
    except run_chapters.ChapterFailed as err:
        failure = str(err)
    if failure:  # outside the except block: show the failing cell, not a chain of runner internals
        pytest.fail(failure, pytrace=False)
    TIMINGS[chapter] = seconds
    executed = json.loads((chapters_out / (chapter + ".ipynb")).read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{chapter}: error outputs in the executed notebook"
    print(f"{chapter}: {time.perf_counter() - start:.1f} s")


# Figures are shown at their own pixel size on the page (up to the content column, about 700-750 CSS px wide):
# at figure.dpi = 100 a figure of at most 7.5 in keeps the style's >= 11 pt text at >= ~10 pt on the page.
MAX_FIGURE_PX = 800


def _png_width(b64: str) -> int:
    import base64
    import struct
    raw = base64.b64decode(b64)
    return struct.unpack(">I", raw[16:20])[0]  # IHDR width


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_figures_fit_the_page(chapter, chapters_out):
    executed = chapters_out / (chapter + ".ipynb")
    if not executed.exists():
        pytest.skip(f"{chapter} was not executed in this session")
    cells = json.loads(executed.read_text())["cells"]
    wide = [(i, _png_width(o["data"]["image/png"])) for i, c in enumerate(cells) for o in c.get("outputs", [])
            if "image/png" in o.get("data", {}) and _png_width(o["data"]["image/png"]) > MAX_FIGURE_PX]
    assert not wide, (f"{chapter}: figures wider than {MAX_FIGURE_PX} px are scaled down on the page and their text "
                      f"falls below 9 pt (cell index, width): {wide}; use at most 3 panels a row and figsize width "
                      f"<= 7.5 in (pcnet.experiments.plotting.MAX_WIDTH)")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_reruns_from_its_middle(chapter, chapters_out):
    """Run the executed copy's code cells in a fresh kernel, then run its second half again in the same kernel:
    no cell may depend on running only once (no variable that changes meaning, no consumed state)."""
    import nbclient
    import nbformat
    executed = chapters_out / (chapter + ".ipynb")
    if not executed.exists():
        pytest.skip(f"{chapter} was not executed in this session")
    nb = nbformat.read(executed, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    middle = code[len(code) // 2]
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "book")}})
    with run_chapters._kernel_env(smoke=True), client.setup_kernel():
        for i in code + [j for j in code if j >= middle]:
            try:
                client.execute_cell(nb.cells[i], i)
            except nbclient.exceptions.CellExecutionError as err:
                pytest.fail(f"{chapter}: cell {i} failed when re-run from cell {middle}:\n{str(err)[-1500:]}",
                            pytrace=False)
