"""One place for the repository URL (_config.yml's repository.url) and `make fork URL=...` (scripts/fork.py)."""
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import fork  # noqa: E402


PLACEHOLDERS = {"you", "someone", "OWNER"}  # owners of the example forks in the docs and these tests


def test_every_place_names_the_configured_repository():
    configured = fork.slug(fork.configured_url())
    found = fork.places(ROOT, configured)
    chapters = sorted(p.relative_to(ROOT) for p in (ROOT / "book").glob("*.ipynb"))
    must = {pathlib.Path(p) for p in ("_config.yml", "README.md", "pyproject.toml", "scripts/colab_setup.py")}
    assert must | set(chapters) <= set(found), sorted(must | set(chapters) - set(found))
    # no place names another owner's copy (a fork rewritten halfway, or a link typed by hand)
    other = re.compile(r"(?:github\.com|colab\.research\.google\.com/github)/([A-Za-z0-9-]+/pcnet)(?![A-Za-z0-9._-])")
    strays = {(str(p.relative_to(ROOT)), m) for p, text in fork.text_files(ROOT) for m in other.findall(text)
              if m != configured and m.split("/")[0] not in PLACEHOLDERS}
    assert not strays, f"places that name another repository than _config.yml's {configured}: {sorted(strays)}"


def test_every_chapter_setup_cell_clones_the_configured_repository():
    url = fork.configured_url()
    for notebook in sorted((ROOT / "book").glob("*.ipynb")):
        assert f"git clone -q --depth 1 {url} /content/pcnet-book" in notebook.read_text(), notebook.name


def test_fork_rewrites_every_place_and_nothing_else(tmp_path):
    old = fork.slug(fork.configured_url())
    before = fork.places(ROOT, old)
    for rel in before:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    (tmp_path / "book" / "untouched.md").write_text("github.com/pcnet-book/pcnet-extras and pcnet-book/pcnet alone\n")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "fork.py"), "https://github.com/someone/pcnet",
                          "--root", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert fork.places(tmp_path, old) == {}  # no place left pointing upstream
    assert fork.places(tmp_path, "someone/pcnet") == before  # every place now points at the fork, as often
    assert fork.configured_url(tmp_path) == "https://github.com/someone/pcnet"
    assert (tmp_path / "book" / "untouched.md").read_text().startswith("github.com/pcnet-book/pcnet-extras")
    assert not list(tmp_path.rglob("*.fork-tmp"))
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "fork.py"), "https://github.com/someone/pcnet",
                            "--root", str(tmp_path)], capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to change" in again.stdout


@pytest.mark.parametrize("url", ["someone/pcnet", "https://gitlab.com/someone/pcnet", "https://github.com/someone"])
def test_fork_refuses_what_is_not_a_github_repository(url, tmp_path):
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "fork.py"), url, "--root", str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "give https://github.com/OWNER/NAME" in run.stderr
    assert (tmp_path / "_config.yml").read_text() == (ROOT / "_config.yml").read_text()
