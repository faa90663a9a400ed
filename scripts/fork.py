"""Point every Colab link and setup cell at a fork: ``make fork URL=https://github.com/someone/pcnet``.

The one place the repository URL is set is ``_config.yml`` (``repository.url``); the Colab launch buttons follow
it, and this command rewrites every other place that spells it out (README, pyproject, the chapters' Colab
setup cells, scripts/colab_setup.py, CITATION.cff, the tests that check them) from the current owner/name to the
fork's. ``tests/test_fork.py`` checks that all places agree with ``_config.yml``.

    python scripts/fork.py https://github.com/someone/pcnet [--root DIR] [--dry-run]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "_build", ".cache", "node_modules", "data", "__pycache__", ".ipynb_checkpoints",
             "pcnet.egg-info"}
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".yml", ".yaml", ".toml", ".cff", ".txt", ".cfg", ".sh", ""}
URL = re.compile(r"^https://github\.com/([A-Za-z0-9](?:[A-Za-z0-9-]{0,38}))/([A-Za-z0-9._-]+?)(?:\.git)?/?$")


def configured_url(root: pathlib.Path = ROOT) -> str:
    """``repository.url`` of ``_config.yml`` (the one place it is set)."""
    text = (root / "_config.yml").read_text()
    match = re.search(r"^repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:[ \t]*(\S+)", text, flags=re.M)
    if not match:
        raise SystemExit(f"{root / '_config.yml'} has no repository.url; add `repository:` with `url: https://github.com/OWNER/NAME`")
    return match.group(1)


def slug(url: str) -> str:
    """'owner/name' of a GitHub URL; a clear error for anything else."""
    match = URL.match(url.strip())
    if not match:
        raise SystemExit(f"not a GitHub repository URL: {url!r}; give https://github.com/OWNER/NAME "
                         f"(e.g. make fork URL=https://github.com/someone/pcnet)")
    return f"{match.group(1)}/{match.group(2)}"


def pattern(owner_name: str) -> re.Pattern:
    """owner/name where it names the repository: after github.com/ (clone, links) or Colab's github/."""
    return re.compile(r"(?<=github\.com/)" + re.escape(owner_name) + r"(?![A-Za-z0-9._-])"
                      r"|(?<=colab\.research\.google\.com/github/)" + re.escape(owner_name) + r"(?![A-Za-z0-9._-])")


def text_files(root: pathlib.Path):
    """Every text file of the tree (not .git, .venv, _build, caches or data/)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            path = pathlib.Path(folder) / name
            if path.suffix in TEXT_SUFFIXES and path.stat().st_size < 5_000_000:
                try:
                    yield path, path.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    continue


def places(root: pathlib.Path, owner_name: str) -> dict[pathlib.Path, int]:
    """{file: occurrences} of ``owner_name`` as the repository, under ``root``."""
    found = pattern(owner_name)
    return {p.relative_to(root): len(found.findall(t)) for p, t in text_files(root) if found.search(t)}


def fork(new_url: str, *, root: pathlib.Path = ROOT, dry_run: bool = False) -> dict[pathlib.Path, int]:
    """Rewrite every place from the configured owner/name to ``new_url``'s; returns {file: replacements}."""
    old, new = slug(configured_url(root)), slug(new_url)
    found, changed = pattern(old), {}
    for path, text in text_files(root):
        updated, count = found.subn(new, text)
        if count:
            changed[path.relative_to(root)] = count
            if not dry_run:
                tmp = path.with_name(f".{path.name}.fork-tmp")
                tmp.write_text(updated, encoding="utf-8")
                os.replace(tmp, path)
    return changed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/fork.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the fork, https://github.com/OWNER/NAME")
    parser.add_argument("--root", type=pathlib.Path, default=ROOT, help="the repository to rewrite (default: this one)")
    parser.add_argument("--dry-run", action="store_true", help="list the places without changing them")
    args = parser.parse_args(argv)
    old = slug(configured_url(args.root))
    if slug(args.url) == old:
        print(f"already {old}: nothing to change")
        return
    changed = fork(args.url, root=args.root, dry_run=args.dry_run)
    for path, count in sorted(changed.items()):
        print(f"{'would rewrite' if args.dry_run else 'rewrote'} {path} ({count})")
    print(f"{old} -> {slug(args.url)} in {len(changed)} files" + ("" if args.dry_run else
          "; commit them, push, and the Colab buttons open your fork"))


if __name__ == "__main__":
    sys.exit(main())
