"""Committed weights and result files: atomic writes, provenance, sha256 checked on load.

Every file written here gets a provenance record (sha256, command, seed, git revision, machine, date,
extra) and an entry in a manifest ``MANIFEST.json``: ``DATA_DIR/MANIFEST.json`` for files inside
``DATA_DIR``, otherwise ``MANIFEST.json`` in the file's own folder. Manifest format::

    {"format": 1, "files": {"weights/NAME.pt": {"sha256": "...", "bytes": 123,
                                                 "command": "...", "seed": 0, "git": "...",
                                                 "date": "..."}}}

Keys are POSIX paths relative to the manifest's folder. Weights ``NAME.pt`` also get a sidecar
``NAME.json`` with the full provenance. A JSON result file holds ``{"result": ..., "provenance": ...}``;
its provenance includes the sha256 of the canonical JSON of ``result``, so a hand-edited number fails
to load.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import pathlib
import platform
import subprocess
import tempfile

import torch

from . import data as _data

MANIFEST_NAME = "MANIFEST.json"


def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def git_revision(*, cwd=None) -> str:
    """``git rev-parse HEAD`` of the repository (suffix ``-dirty`` with uncommitted changes to the code).

    Changes under ``data/`` (weights, results, the manifest the same command writes) do not count.
    """
    cwd = str(cwd or _data.REPO_ROOT)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)data"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict:
    """Platform, CPU count, Python/torch versions and the accelerator used (if any)."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": None}
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name(0)
    return info


def provenance(*, command: str, seed: int | None, extra: dict | None = None) -> dict:
    """The provenance record written beside every committed file (sha256 added by the writers)."""
    if not isinstance(command, str) or not command.strip():
        raise ValueError("command must be the exact command that produced the file, e.g. "
                         "'PCNET_SMOKE=0 papermill book/03_feedback.ipynb ...'")
    if seed is not None and not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return {"command": command, "seed": seed, "git": git_revision(), "machine": machine_info(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "extra": dict(extra or {})}


@contextlib.contextmanager
def _atomic_path(path: pathlib.Path):
    """Yield a temporary path in path's folder; on success it replaces ``path``, on error it vanishes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text_atomic(path: pathlib.Path, text: str) -> None:
    with _atomic_path(path) as tmp:
        tmp.write_text(text)


def manifest_path(path) -> pathlib.Path:
    """The manifest that records ``path``: DATA_DIR's for files inside DATA_DIR, else the folder's."""
    path = pathlib.Path(path).resolve()
    data_dir = _data.DATA_DIR.resolve()
    if path.is_relative_to(data_dir):
        return data_dir / MANIFEST_NAME
    return path.parent / MANIFEST_NAME


def read_manifest(path) -> dict:
    """The manifest at ``path`` ({"format": 1, "files": {}} when absent)."""
    path = pathlib.Path(path)
    if not path.exists():
        return {"format": 1, "files": {}}
    manifest = json.loads(path.read_text())
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{path} is not a pcnet manifest (needs a 'files' mapping)")
    return manifest


def _manifest_key(path: pathlib.Path, manifest: pathlib.Path) -> str:
    return path.resolve().relative_to(manifest.parent.resolve()).as_posix()


def _record(path: pathlib.Path, prov: dict) -> None:
    mpath = manifest_path(path)
    manifest = read_manifest(mpath)
    manifest["files"][_manifest_key(path, mpath)] = {
        "sha256": prov["sha256"], "bytes": path.stat().st_size, "command": prov["command"],
        "seed": prov["seed"], "git": prov["git"], "date": prov["date"]}
    manifest["files"] = dict(sorted(manifest["files"].items()))
    _write_text_atomic(mpath, json.dumps(manifest, indent=2) + "\n")


def _expected_sha(path: pathlib.Path) -> list[tuple[str, str]]:
    """(source, sha256) pairs recorded for ``path`` in its manifest and sidecar."""
    found = []
    mpath = manifest_path(path)
    entry = read_manifest(mpath)["files"].get(_manifest_key(path, mpath))
    if entry is not None:
        found.append((str(mpath), entry["sha256"]))
    sidecar = path.with_suffix(".json")
    if path.suffix != ".json" and sidecar.exists():
        found.append((str(sidecar), json.loads(sidecar.read_text())["sha256"]))
    return found


def save_weights(path, state_dict, *, command: str, seed: int | None, extra: dict | None = None) -> str:
    """Atomically save ``state_dict`` to ``path`` (torch.save), its provenance to ``path.with_suffix('.json')``,
    and record it in the manifest. Returns the file's sha256."""
    path = pathlib.Path(path)
    if path.suffix == ".json":
        raise ValueError(f"{path}: weights need a non-.json suffix such as .pt (the sidecar is .json)")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise TypeError("state_dict must be a dict of tensors (e.g. module.state_dict())")
    prov = provenance(command=command, seed=seed, extra=extra)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with _atomic_path(path) as tmp:
        torch.save(tensors, tmp)
        prov = {"sha256": sha256_file(tmp), "bytes": tmp.stat().st_size, **prov}
        _write_text_atomic(path.with_suffix(".json"), json.dumps(prov, indent=2) + "\n")
    _record(path, prov)
    return prov["sha256"]


def load_weights(path, *, map_location="cpu") -> dict:
    """Load weights saved by ``save_weights`` after checking their sha256 against manifest and sidecar."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. Produce it with the command recorded in "
                                f"the book chapter that trains it (it calls pcnet.experiments.weights.save_weights).")
    expected = _expected_sha(path)
    if not expected:
        raise RuntimeError(f"{path} has no recorded sha256 (no manifest entry, no sidecar). "
                           f"Save it with pcnet.experiments.weights.save_weights so its provenance is recorded.")
    actual = sha256_file(path)
    for source, sha in expected:
        if sha != actual:
            raise RuntimeError(f"{path} has sha256 {actual} but {source} records {sha}: the file "
                               f"changed after it was saved. Re-create it with the recorded command "
                               f"(see {path.with_suffix('.json')}) or restore it with git checkout.")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_provenance(path) -> dict:
    """The provenance sidecar of a weights file, or the provenance block of a JSON result."""
    path = pathlib.Path(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())["provenance"]
    return json.loads(path.with_suffix(".json").read_text())


def save_json_result(path, obj, *, command: str, seed: int | None, extra: dict | None = None) -> str:
    """Atomically write ``{"result": obj, "provenance": ...}`` as JSON and record it in the manifest.

    ``obj`` must be JSON-serialisable (no NaN). Returns the file's sha256."""
    path = pathlib.Path(path)
    try:
        body = _canonical(obj)
    except (TypeError, ValueError) as err:
        raise TypeError(f"result for {path} is not plain JSON ({err}); convert tensors with .tolist() "
                        f"and numpy numbers with float()/int()") from err
    prov = {"result_sha256": hashlib.sha256(body).hexdigest(),
            **provenance(command=command, seed=seed, extra=extra)}
    _write_text_atomic(path, json.dumps({"result": obj, "provenance": prov}, indent=2) + "\n")
    prov["sha256"] = sha256_file(path)
    _record(path, prov)
    return prov["sha256"]


def load_json_result(path):
    """The ``result`` of a file written by ``save_json_result``, after checking its sha256s."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. Produce it with the chapter that writes it "
                                f"(pcnet.experiments.weights.save_json_result).")
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or "result" not in doc or "provenance" not in doc:
        raise ValueError(f"{path} was not written by pcnet.experiments.weights.save_json_result")
    actual = hashlib.sha256(_canonical(doc["result"])).hexdigest()
    if actual != doc["provenance"].get("result_sha256"):
        raise RuntimeError(f"{path}: the result does not match its recorded sha256 (was it edited by "
                           f"hand?). Re-create it with the recorded command: "
                           f"{doc['provenance'].get('command')}")
    file_sha = sha256_file(path)
    for source, sha in _expected_sha(path):
        if sha != file_sha:
            raise RuntimeError(f"{path} has sha256 {file_sha} but {source} records {sha}. Re-create "
                               f"it with: {doc['provenance'].get('command')}")
    return doc["result"]


def verify_manifest(*, manifest=None) -> dict[str, str]:
    """Check every file in a manifest (default ``DATA_DIR/MANIFEST.json``).

    Returns {relative path: "ok" | "missing" | "sha256 mismatch"}."""
    mpath = pathlib.Path(manifest) if manifest is not None else _data.DATA_DIR / MANIFEST_NAME
    status = {}
    for key, entry in read_manifest(mpath)["files"].items():
        f = mpath.parent / key
        if not f.exists():
            status[key] = "missing"
        else:
            status[key] = "ok" if sha256_file(f) == entry["sha256"] else "sha256 mismatch"
    return status
