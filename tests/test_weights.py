"""pcnet.experiments.weights: round trip, sha256 checks, atomic writes, provenance."""
import json

import pytest
import torch

import pcnet.experiments.data as data
import pcnet.experiments.weights as weights


def _state():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3).state_dict()


def test_round_trip_and_provenance(data_dir):
    path = data_dir / "weights" / "lin.pt"
    sha = weights.save_weights(path, _state(), command="python train.py --seed 0", seed=0,
                               extra={"epochs": 2})
    loaded = weights.load_weights(path)
    for k, v in _state().items():
        assert torch.equal(loaded[k], v)
    assert sha == weights.sha256_file(path)
    prov = weights.load_provenance(path)
    for field in ("sha256", "command", "seed", "git", "machine", "date", "extra"):
        assert field in prov
    assert prov["sha256"] == sha and prov["seed"] == 0 and prov["extra"] == {"epochs": 2}
    assert {"platform", "cpu_count", "torch", "python"} <= set(prov["machine"])
    manifest = json.loads((data_dir / "MANIFEST.json").read_text())
    assert manifest["files"]["weights/lin.pt"]["sha256"] == sha
    assert weights.verify_manifest(manifest=data_dir / "MANIFEST.json") == {"weights/lin.pt": "ok"}


def test_sha_mismatch_raises(data_dir):
    path = data_dir / "weights" / "lin.pt"
    weights.save_weights(path, _state(), command="x", seed=None)
    sd = _state()
    sd["bias"] += 1
    torch.save(sd, path)  # replaced behind the manifest's back
    with pytest.raises(RuntimeError, match="sha256.*git checkout"):
        weights.load_weights(path)
    assert weights.verify_manifest(manifest=data_dir / "MANIFEST.json") == {"weights/lin.pt": "sha256 mismatch"}


def test_unrecorded_file_refused(tmp_path):
    path = tmp_path / "stray.pt"
    torch.save(_state(), path)
    with pytest.raises(RuntimeError, match="no recorded sha256"):
        weights.load_weights(path)


def test_atomic_write_leaves_nothing_on_failure(data_dir, monkeypatch):
    path = data_dir / "weights" / "lin.pt"
    weights.save_weights(path, _state(), command="first", seed=1)
    before = sorted(p.name for p in (data_dir / "weights").iterdir())
    old_bytes = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half-written")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        weights.save_weights(path, _state(), command="second", seed=2)
    assert sorted(p.name for p in (data_dir / "weights").iterdir()) == before  # no temp files left
    assert path.read_bytes() == old_bytes
    monkeypatch.undo()
    assert weights.load_provenance(path)["command"] == "first"
    weights.load_weights(path)


def test_json_result_round_trip_and_hand_edit(data_dir):
    path = data_dir / "results" / "best.json"
    obj = {"beta": [0.8, 0.7], "lam": 0.1, "accuracy": 0.91}
    weights.save_json_result(path, obj, command="papermill book/04_dynamics.ipynb", seed=0)
    assert weights.load_json_result(path) == obj
    doc = json.loads(path.read_text())
    assert doc["provenance"]["command"] == "papermill book/04_dynamics.ipynb"
    doc["result"]["accuracy"] = 0.99  # a hand-edited number
    path.write_text(json.dumps(doc))
    with pytest.raises(RuntimeError, match="edited by hand"):
        weights.load_json_result(path)


def test_bad_inputs(data_dir):
    with pytest.raises(ValueError, match="exact command"):
        weights.save_weights(data_dir / "a.pt", _state(), command="", seed=0)
    with pytest.raises(TypeError, match="dict of tensors"):
        weights.save_weights(data_dir / "a.pt", {"a": 1}, command="c", seed=0)
    with pytest.raises(TypeError, match="plain JSON"):
        weights.save_json_result(data_dir / "r.json", {"x": torch.ones(2)}, command="c", seed=0)
    with pytest.raises(FileNotFoundError):
        weights.load_weights(data_dir / "missing.pt")
    assert list(data_dir.iterdir()) == []


def test_outside_data_dir_uses_local_manifest(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATA_DIR", tmp_path / "data")
    path = tmp_path / "elsewhere" / "w.pt"
    weights.save_weights(path, _state(), command="c", seed=0)
    assert (tmp_path / "elsewhere" / "MANIFEST.json").exists()
    weights.load_weights(path)


def test_committed_manifest_files_match():
    manifest = data.REPO_ROOT / "data" / "MANIFEST.json"
    if not manifest.exists():
        pytest.skip("no committed data/MANIFEST.json yet")
    status = weights.verify_manifest(manifest=manifest)
    assert all(v == "ok" for v in status.values()), status
