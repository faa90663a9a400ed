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

import datetime
import hashlib
import json
import os
import pathlib
import platform
import subprocess

import torch

from . import data as _data
from .files import locked, roll_forward, sha256_file, staging

MANIFEST_NAME = "MANIFEST.json"


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
    fix = ("restore it with `git checkout -- data/MANIFEST.json`" if path.parent.resolve() == _data.DATA_DIR.resolve()
           else "delete it and save the files again")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {fix}") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{path} is not a pcnet manifest (needs a 'files' mapping); {fix}")
    return manifest


def _manifest_key(path: pathlib.Path, manifest: pathlib.Path) -> str:
    return path.resolve().relative_to(manifest.parent.resolve()).as_posix()


def _journal(mpath: pathlib.Path) -> pathlib.Path:
    return mpath.with_name(mpath.name + ".pending")


def _recover(mpath: pathlib.Path) -> None:
    """Finish a save that stopped after its commit point (see files.staging); a no-op otherwise."""
    if _journal(mpath).exists():
        with locked(mpath):
            roll_forward(_journal(mpath))


def _save_recorded(path: pathlib.Path, write, prov: dict, *, sidecar: bool) -> dict:
    """Write ``path`` (``write(tmp)``), its sidecar (weights) and its manifest entry all-or-nothing, holding
    the manifest's lock. Returns ``prov`` with the file's sha256 and size."""
    mpath = manifest_path(path)
    with locked(mpath):
        roll_forward(_journal(mpath))
        with staging(_journal(mpath)) as stage:
            tmp = stage.stage(path)
            write(tmp)
            prov = {"sha256": sha256_file(tmp), "bytes": tmp.stat().st_size, **prov}
            if sidecar:
                stage.stage(path.with_suffix(".json")).write_text(json.dumps(prov, indent=2) + "\n")
            manifest = read_manifest(mpath)  # read under the lock: no other process's entry is lost
            manifest["files"][_manifest_key(path, mpath)] = {k: prov[k] for k in ("sha256", "bytes", "command",
                                                                                 "seed", "git", "date")}
            manifest["files"] = dict(sorted(manifest["files"].items()))
            stage.stage(mpath).write_text(json.dumps(manifest, indent=2) + "\n")
            stage.commit()
    return prov


def recorded_hashes(path: pathlib.Path) -> list[tuple[str, str]]:
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
    return _save_recorded(path, lambda tmp: torch.save(tensors, tmp), prov, sidecar=True)["sha256"]


def _existing(path, producer: str) -> pathlib.Path:
    """``path`` after finishing an interrupted save next to it; a clear error when it is missing."""
    path = pathlib.Path(path)
    _recover(manifest_path(path))
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. Produce it with {producer}.")
    return path


def load_weights(path, *, map_location="cpu") -> dict:
    """Load weights saved by ``save_weights`` after checking their sha256 against manifest and sidecar."""
    path = _existing(path, "the command recorded in the book chapter that trains it (it calls "
                           "pcnet.experiments.weights.save_weights)")
    expected = recorded_hashes(path)
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
    text = json.dumps({"result": obj, "provenance": prov}, indent=2) + "\n"
    return _save_recorded(path, lambda tmp: tmp.write_text(text), prov, sidecar=False)["sha256"]


def load_json_result(path):
    """The ``result`` of a file written by ``save_json_result``, after checking its sha256s."""
    path = _existing(path, "the chapter or CLI that writes it (pcnet.experiments.weights.save_json_result)")
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or "result" not in doc or "provenance" not in doc:
        raise ValueError(f"{path} was not written by pcnet.experiments.weights.save_json_result")
    actual = hashlib.sha256(_canonical(doc["result"])).hexdigest()
    if actual != doc["provenance"].get("result_sha256"):
        raise RuntimeError(f"{path}: the result does not match its recorded sha256 (was it edited by "
                           f"hand?). Re-create it with the recorded command: "
                           f"{doc['provenance'].get('command')}")
    file_sha = sha256_file(path)
    for source, sha in recorded_hashes(path):
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


# ---------------------------------------------------------------------------------------------
# Decoder weights: saved with what they fit (preset, layers, shapes) and checked on load

def prednet_fit(net, *, preset: str) -> dict:
    """What decoder weights of PredNet ``net`` fit: preset name, PCoder layers, input shape, layer shapes."""
    return {"preset": preset, "layers": list(net.layers), "input_shape": list(net.input_shape),
            "shapes": [list(s) for s in net.shapes]}


def save_decoders(path, net, *, preset: str, command: str, seed: int | None, extra: dict | None = None) -> str:
    """``save_weights`` of ``net.decoders`` with :func:`prednet_fit` recorded in the sidecar (``extra["fit"]``)."""
    extra = {**(extra or {}), "fit": prednet_fit(net, preset=preset)}
    return save_weights(path, net.decoders.state_dict(), command=command, seed=seed, extra=extra)


def load_decoders(path, net, *, preset: str, require_fit: bool = True) -> None:
    """Load decoder weights saved by :func:`save_decoders` into ``net`` after checking that they were trained
    for the same preset, layers and shapes. ``require_fit=False`` also accepts files saved without that record
    (only for a net built exactly as the file's recorded command built it, e.g. the reference loaders)."""
    state = load_weights(path)
    fit = load_provenance(path).get("extra", {}).get("fit")
    want = prednet_fit(net, preset=preset)
    if fit is None and require_fit:
        raise ValueError(f"{path} does not record the preset, layers and shapes its decoders were trained for; "
                         f"re-save it with pcnet.experiments.weights.save_decoders")
    wrong = {k: (fit[k], v) for k, v in want.items() if fit is not None and fit.get(k) != v}
    if wrong:
        raise ValueError(f"{path} holds decoders trained for " + ", ".join(f"{k}={a}" for k, (a, _) in wrong.items())
                         + "; this PredNet has " + ", ".join(f"{k}={b}" for k, (_, b) in wrong.items())
                         + ". Predify with the recorded layers and input_shape, or train decoders for these")
    net.decoders.load_state_dict(state)
