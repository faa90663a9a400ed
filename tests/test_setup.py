"""The README's commands on a fresh machine: Makefile under GNU make 3.81 rules, Python check, browser setup."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import browser_check

ROOT = pathlib.Path(__file__).resolve().parent.parent
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


def _make(*args, cwd=ROOT, timeout=120):
    return subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@needs_make
def test_failing_step_fails_make_test_without_shellflags(tmp_path):
    """GNU make 3.81 (macOS) ignores .SHELLFLAGS and runs each line with `bash -c`: emulated by `.SHELLFLAGS=-c`.
    A failing step (here: no venv at VENV) must fail `make test` and never print success."""
    proc = _make(".SHELLFLAGS=-c", "test", "TEST_SETUP=", "TEST_STEPS=unit-and-chapters",
                 f"VENV={tmp_path / 'missing'}")
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "all checks passed" not in proc.stdout


@needs_make
def test_make_test_checks_python_and_browser_before_the_long_steps(tmp_path):
    out = _make("-n", "test", f"VENV={tmp_path / 'venv'}").stdout
    lines = out.splitlines()
    first = {key: next(i for i, line in enumerate(lines) if key in line)
             for key in ("check_python.sh", "--ensure-browser", "check_disk.sh", "pip install", "-m pytest tests")}
    assert (first["check_python.sh"] < first["--ensure-browser"] < first["check_disk.sh"] < first["pip install"]
            < first["-m pytest tests"]), out


def _disk(need_mb, where, **env):
    return subprocess.run(["bash", str(ROOT / "scripts" / "check_disk.sh"), str(where), str(need_mb)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def test_too_little_disk_for_the_install_stops_with_the_fix(tmp_path):
    """CI once failed in pip with 'No space left on device' (a disk filled by old clones): the check stops first."""
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    ok = _disk(1, tmp_path / "venv", TMPDIR=str(tmp_path))
    assert ok.returncode == 0 and ok.stdout == ok.stderr == "", ok.stderr
    assert (tmp_path / "venv").is_dir()
    short = _disk(free_mb + 10**6, tmp_path / "venv", TMPDIR=str(tmp_path))
    assert short.returncode == 1
    assert "MB free; installing pcnet's Python packages needs about" in short.stderr, short.stderr
    assert "Fix: free disk space" in short.stderr and "DISK_NEED_MB=" in short.stderr
    bad = _disk("8GB", tmp_path / "venv")
    assert bad.returncode == 2 and "whole number of megabytes" in bad.stderr


def _fake_python(tmp_path, version=(3, 9, 18)):
    """An interpreter that reports an older version (sitecustomize rewrites sys.version_info)."""
    site = tmp_path / "fake_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\nsys.version_info = {version + ('final', 0)!r}\n")
    exe = tmp_path / f"python{version[0]}.{version[1]}"
    exe.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    exe.chmod(0o755)
    return exe


def _check(python, venv):
    return subprocess.run(["bash", str(ROOT / "scripts" / "check_python.sh"), str(python), str(venv)],
                          capture_output=True, text=True, timeout=300)


def test_too_old_python_stops_with_the_fix(tmp_path):
    proc = _check(_fake_python(tmp_path), tmp_path / ".venv")
    assert proc.returncode == 1
    assert "is Python 3.9; pcnet needs Python >= 3.10" in proc.stderr and "make test PYTHON=python3.12" in proc.stderr
    assert not (tmp_path / ".venv").exists()
    missing = _check(tmp_path / "no-such-python", tmp_path / ".venv")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_venv_of_another_python_is_rebuilt_and_a_good_one_kept(tmp_path):
    venv = tmp_path / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (venv / "keep-me").touch()
    kept = _check(sys.executable, venv)
    assert kept.returncode == 0 and "rebuilding" not in kept.stdout and (venv / "keep-me").exists()
    old = venv / "bin" / "python"  # now the venv reports Python 3.9: made by another interpreter
    old.unlink()
    shutil.copy(_fake_python(tmp_path), old)
    proc = _check(sys.executable, venv)
    assert proc.returncode == 0, proc.stderr
    assert "was made by Python 3.9" in proc.stdout and "rebuilding" in proc.stdout
    assert not (venv / "keep-me").exists()
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout
    assert version.strip() == str(tuple(sys.version_info[:2]))


def test_no_browser_and_none_installable_names_the_fix(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    with pytest.raises(SystemExit, match=r"(?s)none could be installed.*sudo apt-get install -y chromium.*"
                                         r"make test CHROMIUM="):
        browser_check.ensure_chromium(candidates=(), path=str(empty), platform="linux")
    with pytest.raises(SystemExit, match="brew install --cask chromium"):
        browser_check.ensure_chromium(candidates=(), path=str(empty), platform="darwin")
    monkeypatch.setattr(browser_check, "_privilege_prefix", lambda: None)  # not root, no passwordless sudo
    (empty / "apt-get").write_text("#!/bin/sh\nexit 0\n")
    (empty / "apt-get").chmod(0o755)
    with pytest.raises(SystemExit, match="none could be installed"):
        browser_check.ensure_chromium(candidates=(), path=str(empty), platform="linux")


def test_browser_is_installed_with_apt_get_when_allowed(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    (bin_dir / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n"
                                     f"[ \"$1\" = install ] && touch {bin_dir}/chromium && chmod +x {bin_dir}/chromium\n"
                                     "exit 0\n")
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setattr(browser_check, "_privilege_prefix", lambda: [])  # root
    found = browser_check.ensure_chromium(candidates=(), path=str(bin_dir), platform="linux")
    assert found == str(bin_dir / "chromium")
    assert log.read_text().split() == ["install", "-y", "-q", "--no-install-recommends", "chromium"]


def test_macos_chrome_is_found(tmp_path):
    chrome = tmp_path / "Applications" / "Google Chrome.app" / "Contents" / "MacOS" / "Google Chrome"
    chrome.parent.mkdir(parents=True)
    chrome.touch()
    assert browser_check.locate_chromium(candidates=(str(chrome),), path=str(tmp_path)) == str(chrome)
    assert any("Google Chrome.app" in c for c in browser_check.CHROMIUM_CANDIDATES)


def test_explicit_browser_path_must_exist(tmp_path):
    with pytest.raises(SystemExit, match="CHROMIUM=.*does not exist"):
        browser_check.locate_chromium(str(tmp_path / "nope"))


def test_ci_and_readme_agree_with_the_makefile():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("book:", "test:", "data:", "python-check:", "browser:"):
        assert f"\n{target}" in makefile
    readme = (ROOT / "README.md").read_text()
    for needle in ("make book", "make test", "make data", "chromium", "dataset-fashion-mnist", "MathJax",
                   "DEVICE"):
        assert needle in readme, f"README does not mention {needle}"
    assert os.access(ROOT / ".ci" / "run", os.R_OK)


def test_make_book_leaves_committed_data_alone():
    """No chapter writes under data/ (they load and verify the studies' committed results); `make data` runs the
    study CLIs that write them."""
    import json

    for path in sorted((ROOT / "book").glob("0*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        assert "save_json_result(" not in code and "save_weights(" not in code, path
    recipe = (ROOT / "Makefile").read_text().split("\ndata: setup\n", 1)[1].split("\n\n", 1)[0]
    for cli in ("dynamics_runs", "corruption_study", "robustness_study"):
        assert f"-m pcnet.experiments.{cli}" in recipe


def test_workflow_tests_first_deploys_main_only_and_never_cancels_a_deploy():
    import yaml

    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as True
    assert "push" in triggers and "pull_request" in triggers
    jobs = wf["jobs"]
    runs = {name: "\n".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    assert "make test" in runs["test"] and "make book" in runs["build"]
    assert jobs["build"]["needs"] == "test" and jobs["deploy"]["needs"] == "build"
    assert "refs/heads/main" in jobs["build"]["if"] and "pull_request" in jobs["build"]["if"]
    assert jobs["deploy"]["concurrency"]["cancel-in-progress"] is False
    assert wf["concurrency"]["cancel-in-progress"] != True  # noqa: E712 - a bool or an expression
    for name in ("test", "build"):
        steps = jobs[name]["steps"]
        cpu = next(i for i, s in enumerate(steps) if "download.pytorch.org/whl/cpu" in s.get("run", ""))
        make = next(i for i, s in enumerate(steps) if "make " in s.get("run", ""))
        assert cpu < make, f"{name}: CPU-only torch must be installed before make"
        assert any(s.get("with", {}).get("cache") == "pip" for s in steps)
        assert any("actions/cache" in s.get("uses", "") and ".npm" in s["with"]["path"] for s in steps)
