"""Plain save and load of a network's feedback: ``net.save_feedback(path)`` / ``pcnet.load_feedback(net, path)``.

One file (written atomically: a temporary file in the same folder, then renamed), holding the decoders' weights,
the layers, input shape and state shapes they fit, the hyperparameters for reference, and the sha256 of all of
it, checked on load. No manifest, no sidecar, no lock file, no provenance beyond what the caller adds in ``note``.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

FORMAT = "pcnet-feedback/1"


def _digest(record: dict) -> str:
    """sha256 over the record's fields (JSON, sorted keys) and every decoder tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in record.items() if k not in ("decoders", "sha256")},
                                       sort_keys=True).encode())
    for name, t in sorted(record["decoders"].items()):
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _fit(net) -> dict:
    return {"layers": list(net.layers), "input_shape": list(net.input_shape), "shapes": [list(s) for s in net.shapes]}


def save_feedback(net, path, *, note: str = "") -> str:
    """Write ``net``'s decoder weights to the one file ``path`` (folders created); returns the sha256 it records.

    ``note``: free text kept in the file (e.g. how the decoders were trained)."""
    path = Path(path)
    decoders = {k: v.detach().cpu().clone() for k, v in net.decoders.state_dict().items()}
    hparams = {k: v.tolist() for k, v in net.hparams().items()}
    record = {"format": FORMAT, **_fit(net), "hparams": hparams, "note": str(note), "decoders": decoders}
    record["sha256"] = _digest(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return record["sha256"]


def read_feedback(path) -> dict:
    """The checked contents of a file written by :func:`save_feedback` (format, hash); raises naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no feedback file at {path}; write one with net.save_feedback({str(path)!r})")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, garbage, not a torch file
        raise ValueError(f"{path} is not a pcnet feedback file (unreadable: {type(err).__name__}); save one with "
                         f"net.save_feedback(path)") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pcnet feedback file (no format {FORMAT!r}); save one with "
                         f"net.save_feedback(path)")
    if record.get("sha256") != _digest(record):
        raise ValueError(f"{path} is damaged: its contents do not match the sha256 it records; save the feedback "
                         f"again with net.save_feedback(path)")
    return record


def load_feedback(net, path):
    """Load decoder weights saved by :func:`save_feedback` into ``net`` (a PredNet); returns ``net``.

    Checks, before changing anything, that the file is whole (its sha256), that it was saved for the same layers,
    input shape and state shapes, and that every decoder tensor has the shape of ``net``'s. Hyperparameters are
    not changed (the file's are in ``read_feedback(path)["hparams"]``)."""
    record = read_feedback(path)
    saved, mine = {k: record[k] for k in ("layers", "input_shape", "shapes")}, _fit(net)
    for key in ("layers", "input_shape", "shapes"):
        if saved[key] != mine[key]:
            raise ValueError(f"{path} holds feedback for {key}={saved[key]}; this network has {key}={mine[key]}; "
                             f"predify the backbone at the saved layers and input shape to load it")
    own = net.decoders.state_dict()
    missing, extra = sorted(own.keys() - record["decoders"].keys()), sorted(record["decoders"].keys() - own.keys())
    wrong = [f"{k}: file {tuple(v.shape)}, network {tuple(own[k].shape)}" for k, v in record["decoders"].items()
             if k in own and v.shape != own[k].shape]
    if missing or extra or wrong:
        raise ValueError(f"{path} holds decoders of another architecture (missing {missing}, unexpected {extra}, "
                         f"other shapes {wrong}); build the network with the decoders it was saved from")
    net.decoders.load_state_dict(record["decoders"])
    return net
