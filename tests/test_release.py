"""Version, citation, changelog and the build stamp in the site footer agree (issue 21)."""
import pathlib
import re
import subprocess
import sys

import yaml

import pcnet

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import stamp_footer  # noqa: E402


def test_version_citation_and_changelog_agree():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    pyproject = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    assert citation["version"] == pyproject == pcnet.__version__
    assert citation["cff-version"] == "1.2.0" and citation["title"] and citation["authors"]
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert citation["repository-code"] == config["repository"]["url"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {pcnet.__version__} (" in changelog and f"tag `v{pcnet.__version__}`" in changelog


def test_footer_is_empty_in_the_committed_config_and_stamped_in_a_copy(tmp_path):
    committed = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert committed["html"]["extra_footer"] == ""  # a build never changes the committed file
    copy = tmp_path / "_config.yml"
    copy.write_text((ROOT / "_config.yml").read_text())
    stamp_footer.stamp(copy)
    footer = yaml.safe_load(copy.read_text())["html"]["extra_footer"]
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert f"{committed['repository']['url']}/commit/{head}" in footer and f">{head}</a>" in footer
    assert re.search(r" on 20\d\d-\d\d-\d\d \d\d:\d\d UTC\.$", footer)
    stamp_footer.stamp(copy)  # stamping again replaces the line, never appends
    assert copy.read_text().count("extra_footer:") == 1


def test_footer_outside_git_and_escaping(tmp_path):
    assert stamp_footer.build_stamp(tmp_path)[0] == "unknown"
    text = stamp_footer.footer("abc<1>", "2026-01-01 00:00 UTC", True, repository=None)
    assert text == "Built from commit abc&lt;1&gt; (with uncommitted changes) on 2026-01-01 00:00 UTC."
