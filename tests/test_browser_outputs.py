"""The browser check's test that no code-output line is wider than the page, on a tiny hand-made page in
headless Chromium at 1,280 px (skipped where no Chromium is installed; `make test` installs one)."""
import pytest

import browser_check

PAGE = """<html><body><main style="width: 700px">
<div class="cell_output"><pre>short line
another short line</pre></div>
<div class="cell_output"><pre>fits
{wide}</pre></div>
<div class="output"><pre>{wide2}</pre></div>
</main></body></html>"""


def test_wide_code_output_lines_are_found(tmp_path):
    chromium = browser_check.locate_chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine (make test installs one)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    wide, wide2 = "x" * 300, "- " + "y" * 200
    (tmp_path / "index.html").write_text(PAGE.format(wide=wide, wide2=wide2))
    with browser_check.serve(tmp_path) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=browser_check.CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.goto(f"{base}/index.html")
            assert browser_check.wide_outputs(page) == [wide[:80], wide2[:80]]
        finally:
            browser.close()
