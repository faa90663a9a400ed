#!/usr/bin/env python
"""Execute the book's chapters with papermill into a site source tree (default ``_build/src``).

    python scripts/run_chapters.py                      # every chapter in _toc.yml, committed parameters
    python scripts/run_chapters.py --smoke              # PCNET_SMOKE=1: each chapter's small CI values
    python scripts/run_chapters.py book/03_feedback.ipynb -p EPOCHS=2 -p SEED=1

The output tree holds copies of ``_config.yml``, ``_toc.yml`` and ``book/`` with the *executed*
notebooks; ``jupyter-book build _build/src --path-output .`` then builds ``_build/html`` from it.
Notebooks run with the original ``book/`` folder as working directory (as on Colab).

Unlike plain papermill, a parameter name the notebook's ``parameters`` cell does not assign is an
error. A failing cell stops the run and is shown (index, source, error); each chapter's wall time
is printed and written to ``<out>/timings.json``, with the sample sizes of the verdicts it printed (every
verdict line reads "(n = ..., MDE ...", see ``pcnet.experiments.verdicts``), so the build log shows them.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import pathlib
import re
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


class ParameterError(ValueError):
    """A parameter the notebook does not declare, or a parameters cell that is not flat."""


class ChapterFailed(RuntimeError):
    """A chapter raised: the message names the notebook and shows the failing cell."""


def toc_files(*, root: pathlib.Path = ROOT) -> list[str]:
    """Every file of ``_toc.yml`` in order (root first), as repo-relative paths without suffix."""
    import yaml
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            for part in entry.get("parts", []) if isinstance(entry, dict) else []:
                walk(part.get("chapters"))
    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return [f.removesuffix(".ipynb").removesuffix(".md") for f in files]


def toc_notebooks(*, root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """The notebooks of the toc that exist, in toc order."""
    found = []
    for f in toc_files(root=root):
        nb = root / (f + ".ipynb")
        if nb.exists():
            found.append(nb)
    return found


def parameters_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"
            and "parameters" in c.get("metadata", {}).get("tags", [])]


def declared_parameters(path) -> dict[str, str]:
    """{NAME: source of its value} from the notebook's single flat ``parameters`` cell.

    Raises ParameterError unless there is exactly one such cell holding only imports and
    assignments to UPPERCASE names."""
    nb = json.loads(pathlib.Path(path).read_text())
    cells = parameters_cells(nb)
    if len(cells) != 1:
        raise ParameterError(f"{path}: expected exactly one code cell tagged 'parameters', found "
                             f"{len(cells)}. Tag the cell of UPPERCASE settings with 'parameters'.")
    source = "".join(cells[0]["source"]) if isinstance(cells[0]["source"], list) else cells[0]["source"]
    names = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else None)
        if targets is None or len(targets) != 1 or not isinstance(targets[0], ast.Name):
            raise ParameterError(f"{path}: the parameters cell must be flat (imports and "
                                 f"`NAME = value` lines only); found: {ast.unparse(node)!r}")
        name = targets[0].id
        if name != name.upper():
            raise ParameterError(f"{path}: parameter {name!r} is not UPPERCASE; rename it to "
                                 f"{name.upper()!r}")
        names[name] = ast.unparse(node.value) if node.value is not None else ""
    return names


def check_parameters(path, parameters: dict) -> None:
    """Refuse parameter names that the notebook does not declare (papermill only warns)."""
    declared = declared_parameters(path)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ParameterError(f"{path}: unknown parameter(s) {', '.join(unknown)}; this notebook "
                             f"declares {', '.join(sorted(declared)) or 'none'}.")


def prepare_source(out: pathlib.Path, *, root: pathlib.Path = ROOT) -> None:
    """Copy _config.yml, _toc.yml and book/ (without notebooks) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, out / name)
    ignore = shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "_build", "__pycache__")
    shutil.copytree(root / "book", out / "book", ignore=ignore, dirs_exist_ok=True)


@contextlib.contextmanager
def _kernel_env(smoke: bool):
    """Environment for the kernels: PCNET_SMOKE as asked, inline figures (no MPLBACKEND)."""
    saved = {k: os.environ.get(k) for k in ("PCNET_SMOKE", "MPLBACKEND")}
    os.environ["PCNET_SMOKE"] = "1" if smoke else "0"
    os.environ.pop("MPLBACKEND", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def strip_widgets(path) -> int:
    """Remove ipywidgets outputs (tqdm progress bars) and widget state from an executed notebook.

    With widget state present, the site would load require.js and the widget manager from a CDN
    (broken offline); progress bars have no place in a static page. Returns the outputs removed."""
    path = pathlib.Path(path)
    nb = json.loads(path.read_text())
    removed = 0
    for cell in nb["cells"]:
        outputs = cell.get("outputs")
        if outputs:
            kept = [o for o in outputs if WIDGET_VIEW not in o.get("data", {})]
            removed += len(outputs) - len(kept)
            cell["outputs"] = kept
    had_state = nb.get("metadata", {}).pop("widgets", None) is not None
    if removed or had_state:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return removed


def _failure_message(path, err) -> str:
    lines = [f"chapter {path} failed"]
    if hasattr(err, "cell_index"):
        lines[0] += f" in cell {err.cell_index} (execution count {err.exec_count})"
        lines += ["--- cell source ---", err.source.rstrip(), "--- error ---",
                  f"{err.ename}: {err.evalue}"]
        tb = "\n".join(err.traceback[-12:]) if err.traceback else ""
        lines.append(re.sub(r"\x1b\[[0-9;]*m", "", tb))  # without ANSI colours
    else:
        lines.append(f"{type(err).__name__}: {err}")
    return "\n".join(lines)


def run_chapter(path, *, out: pathlib.Path, parameters: dict | None = None, smoke: bool = False,
                timeout: int | None = 1800, root: pathlib.Path = ROOT, progress: bool = False) -> float:
    """Execute one notebook into ``out`` (same relative path); returns its wall time in seconds."""
    import papermill
    path = pathlib.Path(path).resolve()
    parameters = dict(parameters or {})
    check_parameters(path, parameters)
    target = out / path.relative_to(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _kernel_env(smoke):
        try:
            papermill.execute_notebook(str(path), str(target), parameters=parameters,
                                       kernel_name="python3", cwd=str(path.parent),
                                       progress_bar=progress, execution_timeout=timeout,
                                       log_output=False)
        except Exception as err:  # noqa: BLE001 - re-raised with the failing cell shown
            raise ChapterFailed(_failure_message(path.relative_to(root), err)) from err
    seconds = time.perf_counter() - start
    strip_widgets(target)
    return seconds


VERDICT_SIZE = re.compile(r"\(n = ([\d,]+), MDE ([\d.]+)")


def verdict_sizes(notebook) -> dict[int, dict]:
    """{n: {"verdicts": count, "mde": [lowest, highest]}} over the verdict lines an executed notebook printed."""
    nb = json.loads(pathlib.Path(notebook).read_text())
    sizes: dict[int, dict] = {}
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})  # printed lines, or displayed Markdown (else its plain text)
            text = output.get("text") or data.get("text/markdown") or data.get("text/plain") or ""
            for n, mde in VERDICT_SIZE.findall("".join(text) if isinstance(text, list) else text):
                row = sizes.setdefault(int(n.replace(",", "")), {"verdicts": 0, "mde": [float(mde), float(mde)]})
                row["verdicts"] += 1
                row["mde"] = [min(row["mde"][0], float(mde)), max(row["mde"][1], float(mde))]
    return dict(sorted(sizes.items()))


def sizes_line(sizes: dict[int, dict]) -> str:
    """'13 verdicts at n = 200 (MDE 1.82 to 4.82)'; several sizes joined by '; ', none: 'no verdict printed'."""
    return "; ".join(f"{row['verdicts']} verdict{'s' * (row['verdicts'] != 1)} at n = {n:,} "
                     f"(MDE {row['mde'][0]:g} to {row['mde'][1]:g})" for n, row in sizes.items()) or "no verdict printed"


def extract_tagged_figure(notebook, *, tag: str = "readme-figure", dest) -> bool:
    """Write the first PNG output of the cell tagged ``tag`` in an executed notebook to ``dest``."""
    import base64
    nb = json.loads(pathlib.Path(notebook).read_text())
    for cell in nb["cells"]:
        if tag in cell.get("metadata", {}).get("tags", []):
            for output in cell.get("outputs", []):
                png = output.get("data", {}).get("image/png")
                if png:
                    dest = pathlib.Path(dest)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(base64.b64decode("".join(png) if isinstance(png, list) else png))
                    return True
    return False


def _parse_parameters(items) -> dict:
    params = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"-p expects NAME=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        try:
            params[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[name] = value
    return params


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("chapters", nargs="*", help="notebooks (default: every notebook in _toc.yml)")
    parser.add_argument("--smoke", action="store_true", help="set PCNET_SMOKE=1 (small CI values)")
    parser.add_argument("--out", default=str(ROOT / "_build" / "src"), help="site source tree")
    parser.add_argument("-p", "--parameter", action="append", metavar="NAME=VALUE",
                        help="override a parameter (must be declared by every chapter run)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out).resolve()
    chapters = [pathlib.Path(c).resolve() for c in args.chapters] or toc_notebooks()
    if not chapters:
        print("no chapter notebooks found in _toc.yml", file=sys.stderr)
        return 1
    params = _parse_parameters(args.parameter)
    try:
        for nb in chapters:  # validate everything before running anything
            check_parameters(nb, params)
    except ParameterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    prepare_source(out)
    (out / "readme_figure.png").unlink(missing_ok=True)  # never leave a stale figure behind
    timings, sizes = {}, {}
    mode = "smoke" if args.smoke else "full"
    for nb in chapters:
        rel = nb.relative_to(ROOT).as_posix()
        print(f"[run_chapters] {rel} ({mode}) ...", flush=True)
        try:
            timings[rel] = run_chapter(nb, out=out, parameters=params, smoke=args.smoke,
                                       timeout=args.timeout, progress=sys.stderr.isatty())
        except ChapterFailed as err:
            print(f"\n[run_chapters] FAILED\n{err}", file=sys.stderr)
            print(f"[run_chapters] the executed copy with the error is {out / rel}", file=sys.stderr)
            return 1
        sizes[rel] = verdict_sizes(out / rel)
        print(f"[run_chapters] {rel}: {timings[rel]:.1f} s; {sizes_line(sizes[rel])}", flush=True)
    for rel in timings:
        if extract_tagged_figure(out / rel, dest=out / "readme_figure.png"):
            print(f"[run_chapters] README figure (cell tagged readme-figure in {rel}) -> "
                  f"{out / 'readme_figure.png'}")
            break
    total = sum(timings.values())
    print(f"[run_chapters] {len(timings)} chapters ({mode}) in {total:.1f} s")
    (out / "timings.json").write_text(json.dumps({"mode": mode, "seconds": timings, "total": total,
                                                  "verdict_sizes": sizes}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
