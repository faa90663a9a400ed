"""Fill the site footer of a build's _config.yml copy with the commit and date it was built from.

    python scripts/stamp_footer.py _build/src/_config.yml     # `make site` / `make site-strict` run this

The committed _config.yml keeps ``extra_footer: ""``; only the copy in the build's source tree is changed, so a
build leaves ``git status`` clean. A tree with uncommitted changes is marked "(with uncommitted changes)".
"""
from __future__ import annotations

import datetime
import html
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def build_stamp(root: pathlib.Path = ROOT) -> tuple[str, str, bool]:
    """(short commit, UTC date of the build, whether the tree has uncommitted changes); ("unknown", date, False)
    outside a git checkout."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", date, False
    return commit, date, dirty


def footer(commit: str, date: str, dirty: bool, *, repository: str | None = None) -> str:
    """The footer's HTML: the commit (a link into the repository when known) and the build date."""
    label = html.escape(commit)
    if repository and commit != "unknown":
        label = f'<a href="{html.escape(repository)}/commit/{html.escape(commit)}">{label}</a>'
    return f"Built from commit {label}{' (with uncommitted changes)' if dirty else ''} on {html.escape(date)}."


def stamp(config: pathlib.Path, *, root: pathlib.Path = ROOT) -> str:
    """Rewrite the ``extra_footer`` line of ``config`` (a copy) with the build's commit and date; returns it."""
    text = config.read_text()
    line = re.compile(r'^(?P<indent>[ \t]+)extra_footer:.*$', flags=re.M)
    if not line.search(text):
        raise SystemExit(f"{config} has no html.extra_footer line; add `extra_footer: \"\"` under `html:`")
    repo = re.search(r"^repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:[ \t]*(\S+)", text, flags=re.M)
    value = footer(*build_stamp(root), repository=repo.group(1) if repo else None)
    quoted = "'" + value.replace("'", "''") + "'"  # a YAML single-quoted scalar
    config.write_text(line.sub(lambda m: f"{m.group('indent')}extra_footer: {quoted}", text, count=1))
    return value


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/stamp_footer.py _build/src/_config.yml")
    print("site footer:", stamp(pathlib.Path(sys.argv[1])))
