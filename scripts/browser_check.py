#!/usr/bin/env python
"""Open the built site in headless Chromium, as a reader would, and check what they see.

    python scripts/browser_check.py --site _build/html [--chapter book/01_predictive_coding.html]
    python scripts/browser_check.py --ensure-browser     # setup step of `make test` (standard library only)

Serves the site on a free localhost port (python http.server), opens the start page and one chapter
in headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no browser download) and
asserts: the chapter title, at least one equation rendered by MathJax (an SVG inside an
``mjx-container``, no raw TeX left), at least one figure image loaded (naturalWidth > 0), no code-output
line wider than the page (cut off at 1,280 px), no console errors and no failed requests; ``--also`` checks
more chapters the same way (without the equation check). Every chapter's Colab link must point at a notebook that
exists in the repository. Screenshots are saved to ``<screenshot-dir>/browser_*.png``.

``--ensure-browser`` finds Chromium or Google Chrome (Linux and macOS); where none is found and
``apt-get`` can run (as root or with passwordless sudo) it installs the Debian package ``chromium``,
otherwise it stops with the command that fixes it. It needs only the standard library, so
``make test`` runs it before the long steps.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import pathlib
import re
import os
import shutil
import subprocess
import sys
import threading

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome",
                       "/usr/bin/google-chrome-stable",
                       "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
                       "/Applications/Chromium.app/Contents/MacOS/Chromium",
                       "~/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
                       "~/Applications/Chromium.app/Contents/MacOS/Chromium")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
COLAB = re.compile(r"https://colab\.research\.google\.com/github/([^/]+)/([^/]+)/blob/([^/]+)/([^\"'<> ]+\.ipynb)")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test log short
        pass


@contextlib.contextmanager
def serve(site: pathlib.Path):
    """Serve ``site`` on 127.0.0.1 at a free port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def locate_chromium(explicit: str | None = None, *, candidates=CHROMIUM_CANDIDATES,
                    path: str | None = None) -> str | None:
    """Path of a Chromium/Chrome binary: ``explicit``, a known install location, or one on ``path``."""
    if explicit:
        if not pathlib.Path(explicit).expanduser().exists():
            raise SystemExit(f"CHROMIUM={explicit} does not exist; give the path of a Chromium or Chrome binary")
        return str(pathlib.Path(explicit).expanduser())
    for candidate in candidates:
        if pathlib.Path(candidate).expanduser().exists():
            return str(pathlib.Path(candidate).expanduser())
    for name in CHROMIUM_NAMES:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def install_hint(platform: str = sys.platform) -> str:
    if platform == "darwin":
        return ("install Google Chrome (https://www.google.com/chrome) or run `brew install --cask chromium`, "
                "then rerun make test")
    return ("run `sudo apt-get install -y chromium` (Debian; on Ubuntu `sudo apt-get install -y chromium-browser`), "
            "then rerun make test")


def find_chromium(explicit: str | None = None) -> str:
    found = locate_chromium(explicit)
    if found is None:
        raise SystemExit(f"headless Chromium not found. Fix: {install_hint()}, or pass --chromium PATH")
    return found


def _privilege_prefix() -> list[str] | None:
    """[] as root, ["sudo", "-n"] with passwordless sudo, None when packages cannot be installed."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def ensure_chromium(explicit: str | None = None, *, candidates=CHROMIUM_CANDIDATES, path: str | None = None,
                    platform: str = sys.platform) -> str:
    """Find Chromium/Chrome; on Debian-like systems install the package ``chromium`` when allowed.

    Raises SystemExit naming the command that fixes it when no browser is found or can be installed."""
    found = locate_chromium(explicit, candidates=candidates, path=path)
    if found:
        return found
    apt, prefix = shutil.which("apt-get", path=path), None
    if platform.startswith("linux") and apt:
        prefix = _privilege_prefix()
    if prefix is not None:
        print("[browser] installing the Debian package chromium (headless browser for the site check)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [*prefix, apt, "install", "-y", "-q", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env).returncode != 0:
            subprocess.run([*prefix, apt, "update", "-q"], env=env)
            subprocess.run(install, env=env)
        found = locate_chromium(candidates=candidates, path=path)
        if found:
            return found
    where = "apt-get could not install it" if prefix is not None else "none could be installed automatically"
    raise SystemExit(f"error: no Chromium or Google Chrome found for the headless-browser check of `make test`, "
                     f"and {where}.\nFix: {install_hint(platform)}; or name a binary: make test CHROMIUM=/path/to/chrome")


def check_colab_links(site: pathlib.Path) -> list[str]:
    """Every Colab URL in the site must name a notebook that exists in this repository."""
    problems, seen = [], 0
    for page in sorted(site.rglob("*.html")):
        for owner, repo, branch, path in set(COLAB.findall(page.read_text(errors="replace"))):
            seen += 1
            if not (ROOT / path).is_file():
                problems.append(f"{page.relative_to(site)}: Colab link to {path}, which is not in the repository")
    if seen == 0:
        problems.append("no Colab launch link found in the site")
    return problems


# Code outputs (``pre`` blocks of cell outputs) whose text is wider than their box: the reader sees the line cut
# off at the page's edge (or a sideways scrollbar). Returns the start of the longest line of each.
WIDE_OUTPUTS_JS = """() => Array.from(document.querySelectorAll('div.cell_output pre, div.output pre'))
    .filter(p => p.scrollWidth > p.clientWidth + 1)
    .map(p => p.textContent.split('\\n').reduce((a, b) => (b.length > a.length ? b : a), '').slice(0, 80))"""


def wide_outputs(page) -> list[str]:
    """The code-output lines of ``page`` wider than the page's column (each shown by its first 80 characters)."""
    return page.evaluate(WIDE_OUTPUTS_JS)


def check_page(page, url: str, *, expect_title: str | None, need_math: bool, need_figure: bool,
               screenshot: pathlib.Path) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text} ({m.location.get('url', '')})")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} ({r.failure})")
            if r.url.startswith("http://127.0.0.1") else None)
    page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    response = page.goto(url, wait_until="load")
    problems = [] if response and response.ok else [f"{url}: HTTP {response.status if response else '?'}"]
    if need_math:
        try:
            page.wait_for_function("document.querySelectorAll('mjx-container svg').length > 0", timeout=30000)
        except Exception:  # noqa: BLE001 - reported below with what the page shows
            pass
        rendered = page.evaluate("document.querySelectorAll('mjx-container svg').length")
        raw_tex = page.evaluate("Array.from(document.querySelectorAll('div.math')).filter("
                                "d => !d.querySelector('mjx-container')).length")
        if rendered == 0:
            problems.append(f"{url}: no equation rendered by MathJax (no mjx-container svg)")
        if raw_tex:
            problems.append(f"{url}: {raw_tex} display equation(s) left as raw TeX")
    page.wait_for_load_state("networkidle")
    if need_figure:
        loaded = page.evaluate("Array.from(document.querySelectorAll('main img, article img'))"
                               ".filter(i => i.complete && i.naturalWidth > 0 && !i.src.includes('logo')).length")
        if loaded == 0:
            problems.append(f"{url}: no figure image loaded (img with naturalWidth > 0)")
    title = page.evaluate("(document.querySelector('main h1, article h1') || {}).textContent || ''")
    title = title.replace("#", "").strip()
    if expect_title is not None and expect_title not in title:
        problems.append(f"{url}: title {title!r} does not contain {expect_title!r}")
    problems += [f"{url}: a code-output line is wider than the page and is cut off: {line!r}; print it shorter "
                 "(wrap it, or show findings as Markdown)" for line in wide_outputs(page)]
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=False)
    problems += [f"{url}: {e}" for e in errors]
    print(f"[browser_check] {url}: title {title!r}, screenshot {screenshot}")
    return problems


def chapter_title(site: pathlib.Path, chapter: str) -> str:
    """The chapter's h1 as written in the built HTML (what the browser must show)."""
    html = (site / chapter).read_text(errors="replace")
    match = re.search(r"<h1[^>]*>(.*?)</h1>", html, re.S)
    if not match:
        raise SystemExit(f"{site / chapter} has no <h1> title")
    text = re.sub(r"<[^>]+>", "", match.group(1))
    return re.sub(r"\s+", " ", text.replace("#", "")).strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--site", default=str(ROOT / "_build" / "html"))
    parser.add_argument("--chapter", default="book/01_predictive_coding.html",
                        help="chapter page to check, relative to the site")
    parser.add_argument("--also", nargs="*", default=[], metavar="PAGE",
                        help="more chapter pages to check the same way (screenshots browser_<name>.png), e.g. "
                             "book/04_dynamics.html book/05_corruptions.html")
    parser.add_argument("--screenshot-dir", default=str(ROOT / "_build"))
    parser.add_argument("--chromium", default=None, help="path to a Chromium/Chrome binary")
    parser.add_argument("--ensure-browser", action="store_true",
                        help="only find (or install) the browser and print its path")
    args = parser.parse_args(argv)
    if args.ensure_browser:
        print(f"[browser] headless browser: {ensure_chromium(args.chromium)}")
        return 0
    site = pathlib.Path(args.site).resolve()
    if not (site / "index.html").exists():
        raise SystemExit(f"{site}/index.html not found: build the site first (make book / make test)")
    if not (site / args.chapter).exists():
        raise SystemExit(f"{site / args.chapter} not found: is the chapter in _toc.yml?")
    from playwright.sync_api import sync_playwright
    shots = pathlib.Path(args.screenshot_dir).resolve()
    expected = chapter_title(site, args.chapter)
    problems = check_colab_links(site)
    with serve(site) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(args.chromium), args=CHROMIUM_ARGS,
                                     headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            problems += check_page(context.new_page(), f"{base}/index.html", expect_title=None,
                                   need_math=False, need_figure=False,
                                   screenshot=shots / "browser_start.png")
            problems += check_page(context.new_page(), f"{base}/{args.chapter}", expect_title=expected,
                                   need_math=True, need_figure=True,
                                   screenshot=shots / "browser_chapter.png")
            for extra in args.also:
                problems += check_page(context.new_page(), f"{base}/{extra}", expect_title=chapter_title(site, extra),
                                       need_math=False, need_figure=True,
                                       screenshot=shots / f"browser_{pathlib.Path(extra).stem}.png")
        finally:
            browser.close()
    if problems:
        print("[browser_check] FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"[browser_check] ok: start page and {args.chapter} ({expected!r}) render with MathJax "
          f"equations, loaded figures, working Colab links and no console errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
