"""Shared pytest setup: the repository on sys.path, the options of the chapter runs, shared fixtures."""
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def pytest_addoption(parser):
    group = parser.getgroup("pcnet")
    group.addoption("--run-chapters", action="store_true",
                    help="execute every chapter of _toc.yml once in smoke mode (PCNET_SMOKE=1)")
    group.addoption("--chapters-out", default=str(ROOT / "_build" / "src"),
                    help="site source tree that receives the executed chapters")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty temporary directory standing in for the repository's data/ (``pcnet.experiments.data.DATA_DIR``)."""
    from pcnet.experiments import data

    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread avoids thread-pool overhead (and contention on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
