"""Files under concurrency and failure (issue 11, items 6 and 7, security): locks, atomic all-or-nothing saves,
pinned download checksums, user strings that become paths."""
import hashlib
import io
import json
import multiprocessing
import os
import tarfile

import pytest
import torch

import pcnet.experiments.data as data
import pcnet.experiments.weights as weights
from pcnet.experiments import corruptions, files, models, published


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    return tmp_path


def _write_results(folder, worker, count):
    data.DATA_DIR = folder  # in the child only
    for i in range(count):
        weights.save_json_result(folder / "results" / f"w{worker}_{i}.json", {"worker": worker, "i": i},
                                 command=f"worker {worker}", seed=i)


def test_manifest_loses_no_entry_with_several_processes(tmp_path):
    ctx = multiprocessing.get_context("fork")  # fast: the children share the imported modules
    procs = [ctx.Process(target=_write_results, args=(tmp_path, w, 12)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert len(manifest["files"]) == 48
    assert set(weights.verify_manifest(manifest=tmp_path / "MANIFEST.json").values()) == {"ok"}
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.pending"))


def _fill_cache(folder, name):
    torch.manual_seed(0)
    images, labels = torch.rand(3, 1, 8, 8), torch.arange(3)
    corruptions.corrupted_set(images, labels, names=(name,), severities=(1,), cache_dir=folder, progress=False)


def test_corruption_cache_filled_by_several_processes(tmp_path):
    names = ("brightness", "contrast", "gaussian_noise", "pixelate")
    ctx = multiprocessing.get_context("fork")  # fast: the children share the imported modules
    procs = [ctx.Process(target=_fill_cache, args=(tmp_path, n)) for n in names]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * len(names)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert sorted(manifest) == sorted(names)
    assert all(manifest[n]["sha256"] == files.sha256_file(folder / f"{n}.pt") for n in names)


def test_corrupt_cache_manifest_is_rebuilt(tmp_path):
    _fill_cache(tmp_path, "brightness")
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (folder / "MANIFEST.json").write_text("{not json")
    _fill_cache(tmp_path, "brightness")  # regenerates instead of crashing
    assert "brightness" in json.loads((folder / "MANIFEST.json").read_text())


def _state(shift=0.0):
    torch.manual_seed(0)
    return {k: v + shift for k, v in torch.nn.Linear(4, 3).state_dict().items()}


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4], ids=["journal", "weights", "sidecar", "manifest"])
def test_save_weights_is_all_or_nothing(data_dir, monkeypatch, fail_at):
    """A failure at each os.replace of a save (the journal is the commit point, then weights, sidecar and
    manifest): the next load sees the old save (before the commit) or the new one complete, never a mix."""
    path = data_dir / "weights" / "lin.pt"
    weights.save_weights(path, _state(), command="first", seed=1)
    real, count = os.replace, {"n": 0}

    def flaky(src, dst):
        if str(src).endswith(".tmp"):
            count["n"] += 1
            if count["n"] == fail_at:
                raise OSError("disk full (injected)")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="injected"):
        weights.save_weights(path, _state(1.0), command="second", seed=2)
    monkeypatch.setattr(os, "replace", real)
    expected, command = (_state(), "first") if fail_at == 1 else (_state(1.0), "second")
    loaded = weights.load_weights(path)  # rolls a committed save forward, then checks the sha256s
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    assert weights.load_provenance(path)["command"] == command
    assert weights.verify_manifest(manifest=data_dir / "MANIFEST.json") == {"weights/lin.pt": "ok"}
    assert not list(data_dir.rglob("*.tmp")) and not list(data_dir.rglob("*.pending"))


def test_save_failing_before_commit_keeps_the_old_files(data_dir, monkeypatch):
    path = data_dir / "weights" / "lin.pt"
    weights.save_weights(path, _state(), command="first", seed=1)

    def broken_save(obj, f):
        raise OSError("no space left (injected)")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="injected"):
        weights.save_weights(path, _state(1.0), command="second", seed=2)
    monkeypatch.undo()
    loaded = weights.load_weights(path)
    assert all(torch.equal(loaded[k], v) for k, v in _state().items())
    assert weights.load_provenance(path)["command"] == "first"
    assert not list(data_dir.rglob("*.tmp")) and not list(data_dir.rglob("*.pending"))


def test_corrupt_manifest_names_the_file_and_the_fix(data_dir):
    (data_dir / "MANIFEST.json").write_text('{"files": ')
    with pytest.raises(ValueError, match=r"MANIFEST.json is not valid JSON.*git checkout -- data/MANIFEST.json"):
        weights.read_manifest(data_dir / "MANIFEST.json")


def _tar_bytes():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        payload = b"labels"
        info = tarfile.TarInfo("CIFAR-10-C/labels.npy")
        info.size = len(payload)
        t.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


class _Response(io.BytesIO):
    headers = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_checks_the_published_md5(tmp_path, monkeypatch):
    import urllib.request
    body = _tar_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, **kw: _Response(body))
    with pytest.raises(RuntimeError, match=r"CIFAR-10-C.tar has MD5 .* Zenodo publishes 56bf5dcef84df0e2308c6dcbcbbd8499"):
        published.download_cifar10_c(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing extracted, nothing left behind
    monkeypatch.setitem(published.ARCHIVE_MD5, "CIFAR-10-C.tar", hashlib.md5(body).hexdigest())
    folder = published.download_cifar10_c(tmp_path)
    assert (folder / "labels.npy").read_bytes() == b"labels"


@pytest.mark.parametrize("call,message", [
    (lambda: models.feedback_weights_path("fmnist_vgg", seed="/../.."), "seed must be an integer >= 0"),
    (lambda: models.feedback_weights_path("../../etc", seed=0), "name must be a plain name"),
    (lambda: models.reference_weights_path("a/b"), "name must be a plain name"),
    (lambda: corruptions.download_imagenet_c("/nonexistent", families=("../../x",)), "unknown ImageNet-C family"),
])
def test_user_strings_that_become_paths_are_validated(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_load_cifar10_c_names_are_checked_before_reading(tmp_path):
    (tmp_path / "labels.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown corruption '../labels'"):
        corruptions.load_cifar10_c(tmp_path, names=("../labels",))


@pytest.mark.parametrize("content", ["truncated", "not gzip"])
def test_damaged_cached_data_file_names_the_file_and_the_fix(tmp_path, content):
    import gzip
    body = gzip.compress(bytes(range(256)) * 64)
    raw = body[: len(body) // 2] if content == "truncated" else b"plain bytes, not gzip"
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / f"{name}.gz").write_bytes(raw)
    with pytest.raises(RuntimeError, match=r"t10k-images-idx3-ubyte.gz cannot be read.*truncated or not gzip.*Delete it"):
        data.fashion_mnist(split="test", root=tmp_path)


def test_a_save_to_a_folder_stops_before_its_commit_point(tmp_path):
    """Issue 20: a folder as target failed after the commit point and left MANIFEST.json.pending, which then blocked
    every load and save in that folder."""
    from pcnet.experiments import weights
    (tmp_path / "out.json").mkdir()
    (tmp_path / "w.pt").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder; give a file path"):
        weights.save_json_result(tmp_path / "out.json", {"a": 1}, command="test", seed=0)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        weights.save_weights(tmp_path / "w.pt", {"w": torch.zeros(1)}, command="test", seed=0)
    assert not list(tmp_path.glob("*.pending")) and not list(tmp_path.glob(".*.tmp"))
    weights.save_json_result(tmp_path / "ok.json", {"a": 1}, command="test", seed=0)  # the folder is not blocked
    assert weights.load_json_result(tmp_path / "ok.json") == {"a": 1}


def test_a_blocked_journal_names_the_file_and_the_fix(tmp_path):
    from pcnet.experiments import files, models, weights
    weights.save_json_result(tmp_path / "ok.json", {"a": 1}, command="test", seed=0)
    staged, blocker = tmp_path / ".x.tmp", tmp_path / "x.json"
    staged.write_text("{}")
    blocker.mkdir()  # a folder where the journal wants to put a file
    (blocker / "f").write_text("")
    (tmp_path / "MANIFEST.json.pending").write_text(json.dumps([[str(staged), str(blocker)]]))
    with pytest.raises(files.JournalError, match=r"cannot be replaced.*move .*x.json out of the way.*deleting "
                                                 r".*MANIFEST.json.pending"):
        weights.load_json_result(tmp_path / "ok.json")
    with pytest.raises(files.JournalError):  # the reference loaders pass it on instead of "retrain the weights"
        models._load(tmp_path / "ok.json", "run `python -m pcnet.experiments.train backbone`")


def test_saved_files_are_readable_by_others(tmp_path):
    import os
    from pcnet.experiments import weights
    old = os.umask(0o022)
    try:
        weights.save_weights(tmp_path / "w.pt", {"w": torch.zeros(1)}, command="test", seed=0)
    finally:
        os.umask(old)
    for name in ("w.pt", "w.json", "MANIFEST.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
