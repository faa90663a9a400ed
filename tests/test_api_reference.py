"""docs/API.md, the API reference that reads on GitHub without a build, is current; PredNet's docstring lists
its own methods."""
import pathlib
import sys

import pcnet

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import api_reference  # noqa: E402


def test_committed_api_reference_is_current():
    committed = (ROOT / "docs" / "API.md").read_text()
    assert committed == api_reference.render(), ("docs/API.md is stale: run `.venv/bin/python "
                                                 "scripts/api_reference.py` and commit docs/API.md")


def test_api_reference_covers_the_package_with_prednet_methods_first():
    text = (ROOT / "docs" / "API.md").read_text()
    for name in ("pcnet.predify", "pcnet.load_feedback", "pcnet.dynamics", "pcnet.experiments.train",
                 "pcnet.experiments.evaluate"):
        assert f"`{name}" in text, name
    prednet = text.index("### class `pcnet.PredNet`")
    run, next_section = text.index("#### `pcnet.PredNet.run(", prednet), text.index("\n### ", prednet + 1)
    assert run < next_section and "register_buffer" not in text[prednet:next_section]  # nn.Module's are not listed
    assert ":func:" not in text and "``" not in text  # Sphinx roles and RST literals rewritten for GitHub


def test_prednet_docstring_names_each_of_its_own_public_methods():
    own = set(api_reference.own_methods(pcnet.PredNet)) - {"extra_repr"}
    assert {"run", "save_feedback", "update_state"} <= own
    missing = sorted(m for m in own if f"``{m}``" not in pcnet.PredNet.__doc__)
    assert not missing, f"PredNet's docstring does not list {missing}"
    first = pcnet.PredNet.__doc__.index("Its own methods")
    assert first < pcnet.PredNet.__doc__.index("Concurrency")  # near the top, before the details
