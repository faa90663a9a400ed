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
