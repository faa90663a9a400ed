"""Resumable study chunks keyed by their content, and the rules every study CLI follows when it writes.

A long study is cut into *jobs*; each job's result is one chunk file. The rules:

* **A chunk's key is the hash of everything its job reads**: the study's name, its configuration, the job, and
  the sha256 of every weight, data or result file the job loads (:func:`input_digests`). Retrain the decoders
  and every key changes, so no old chunk can count as done: it is simply not found, and the job runs again.
* **A chunk file is accepted only for the job whose key it carries**: the key is stored inside the file (and
  its first 16 hex digits in the file's name); a file copied or renamed under another job's name is refused.
* **A damaged chunk is never read as a result**: unreadable JSON, a missing field or a body that does not match
  its sha256 raises :class:`ChunkError` naming the file and the fix (delete it; the next run recomputes it).
* **A CLI writes a committed result only for the committed configuration** (:func:`check_output`): any other
  configuration (a smoke run, a subset of corruptions, other sizes) must name a scratch ``--out`` outside
  ``data/results``; the target is checked before any compute (a folder where a file is expected, a file where a
  folder is expected, or a read-only place stops at once).

Chunk file format (JSON)::

    {"format": 1, "study": "...", "job": <job>, "key": "<sha256>", "inputs": {name: sha256},
     "result": <result>, "sha256": "<sha256 of {key, result}>", "cpu_s": 1.2, "wall_s": 1.3, "git": "<rev>"}
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import re
import time

from .files import write_text_atomic

FORMAT = 1


class ChunkError(RuntimeError):
    """A chunk file that cannot be used (damaged, edited, or another job's); the message names the file and fix."""


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    from .files import sha256_file

    return sha256_file(path)


def input_digests(paths: dict) -> dict[str, str]:
    """{name: sha256 of the file's bytes} for {name: path}; a missing file raises FileNotFoundError naming it.

    Digests are cached per (path, size, mtime), so a study can ask for them once per job cheaply."""
    out = {}
    for name, path in sorted(paths.items()):
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"input {name!r} of the study, {path}, is missing; restore it (git checkout) or "
                                    "recreate it with the command in data/MANIFEST.json")
        stat = path.stat()
        out[name] = _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return out


def chunk_key(*, study: str, config, job, inputs: dict[str, str]) -> str:
    """sha256 of everything a job's result depends on: study, configuration, job and input file digests."""
    return hashlib.sha256(_canonical({"format": FORMAT, "study": study, "config": config, "job": job,
                                      "inputs": inputs})).hexdigest()


_UNSAFE = re.compile(r"[^A-Za-z0-9_.+=-]+")


def job_name(job) -> str:
    """A readable file-name stem for a job (a string or a dict of plain values)."""
    text = job if isinstance(job, str) else "_".join(f"{k}={v}" for k, v in sorted(job.items()))
    return _UNSAFE.sub("__", text).strip("_.")[:120] or "job"


class ChunkStore:
    """The chunks of one study under ``folder``: ``load(job, inputs)`` / ``save(job, inputs, result, ...)``.

    ``config`` is the study's configuration (plain JSON); ``command`` is the command that resumes the study (it
    is named in every error). ``inputs`` of a job is {name: sha256} from :func:`input_digests`.
    """

    def __init__(self, folder, *, study: str, config, command: str, name_of=job_name):
        self.folder, self.study, self.config, self.command = pathlib.Path(folder), study, config, command
        self.name_of = name_of  # job -> readable file-name stem (the key's first 16 hex digits follow it)

    def key(self, job, inputs: dict[str, str]) -> str:
        return chunk_key(study=self.study, config=self.config, job=job, inputs=inputs)

    def path(self, job, inputs: dict[str, str]) -> pathlib.Path:
        return self.folder / f"{job_name(self.name_of(job))}.{self.key(job, inputs)[:16]}.json"

    def _damaged(self, path, why: str) -> ChunkError:
        return ChunkError(f"chunk file {path} {why}; delete it and rerun `{self.command}` (it recomputes that job)")

    def load(self, job, inputs: dict[str, str]):
        """The job's stored result, or None when it has not been computed with these inputs."""
        path, key = self.path(job, inputs), self.key(job, inputs)
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._damaged(path, f"is not readable JSON ({type(err).__name__}: {err})") from err
        if not isinstance(doc, dict) or not {"key", "result", "sha256"} <= set(doc):
            raise self._damaged(path, "is not a chunk (needs the fields key, result and sha256)")
        if doc["key"] != key:
            raise self._damaged(path, f"holds the result of another job or of other inputs (its key {str(doc['key'])[:16]}"
                                      f"..., this job's {key[:16]}...): it was copied or renamed")
        if hashlib.sha256(_canonical({"key": doc["key"], "result": doc["result"]})).hexdigest() != doc["sha256"]:
            raise self._damaged(path, "does not match its sha256 (edited or damaged)")
        return doc["result"]

    def record(self, job, inputs: dict[str, str]) -> dict | None:
        """The whole stored document (result, CPU seconds, git revision) after :meth:`load`'s checks, or None."""
        if self.load(job, inputs) is None:
            return None
        return json.loads(self.path(job, inputs).read_text())

    def save(self, job, inputs: dict[str, str], result, *, cpu_s: float | None = None, wall_s: float | None = None,
             git: str = "") -> pathlib.Path:
        """Atomically write the job's result with its key and sha256 (``git``: the revision the worker started with)."""
        key, path = self.key(job, inputs), self.path(job, inputs)
        doc = {"format": FORMAT, "study": self.study, "job": job, "key": key, "inputs": inputs, "result": result,
               "sha256": hashlib.sha256(_canonical({"key": key, "result": result})).hexdigest(),
               "cpu_s": None if cpu_s is None else round(cpu_s, 2),
               "wall_s": None if wall_s is None else round(wall_s, 2), "git": git}
        write_text_atomic(path, json.dumps(doc) + "\n")
        return path

    def run(self, job, inputs: dict[str, str], compute, *, git: str = ""):
        """The stored result, or ``compute()`` timed (CPU and wall seconds) and saved; returns the result."""
        result = self.load(job, inputs)
        if result is None:
            wall, cpu = time.perf_counter(), time.process_time()
            result = compute()
            self.save(job, inputs, result, cpu_s=time.process_time() - cpu, wall_s=time.perf_counter() - wall, git=git)
        return result


# --------------------------------------------------------------------------- where a CLI may write
def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def check_output(path, *, kind: str, committed: bool, flag: str = "--out") -> pathlib.Path:
    """``path`` (expanded) when a study may write its result there, checked before any compute.

    ``kind`` is "file" or "dir" (what the CLI writes); ``committed`` says whether the configuration being run is
    the committed one. A non-committed configuration may not write inside ``data/results`` (it would replace a
    committed result); a folder where a file is expected (or the reverse), or a place that cannot be written,
    raises ValueError naming ``flag`` and the fix."""
    from .data import DATA_DIR

    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    path = pathlib.Path(path).expanduser()
    if not committed and _inside(path, DATA_DIR / "results"):
        raise ValueError(f"{flag} {path} is inside {DATA_DIR / 'results'}, which holds the committed results, but this "
                         f"run is not the committed configuration (a smoke run, a subset or other sizes); give {flag} a "
                         "scratch path, e.g. /tmp/study.json")
    if kind == "file" and path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; this command writes one result file: give a file path such as "
                         f"{path / 'result.json'}")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; this command writes into a folder: give a folder path")
    parent = path if kind == "dir" else path.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot create files in {existing or parent} (not a writable folder); choose "
                         "another path")
    return path


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N; anything else raises ValueError with the expected form."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ValueError(f"--shard must be I/N with 0 <= I < N (worker I of N, e.g. 0/2 and 1/2), got {text!r}")
    return int(match[1]), int(match[2])


def reference_inputs(*, backbone_seed: int = 0, decoder_seed: int = 0, splits=("test",), name: str = "fmnist_vgg",
                     extra: dict | None = None) -> dict[str, str]:
    """The digests of what a job on the reference network reads: its backbone and decoder weight files, the
    Fashion-MNIST splits (the sha256 of their decompressed content, which :mod:`data` checks on every load) and any
    ``extra`` {name: path} (e.g. chapter 4's tuned values)."""
    from . import data, models

    files = {"backbone": models.reference_weights_path(name, backbone_seed=backbone_seed),
             "decoders": models.feedback_weights_path(name, seed=decoder_seed, backbone_seed=backbone_seed),
             **(extra or {})}
    digests = input_digests(files)
    for split in splits:
        for part in data._FASHION_FILES[split]:
            digests[f"fashion-mnist/{part}"] = data._FASHION_SHA256[part]
    return digests


def chunk_folder(requested, *, default, committed: bool, out) -> pathlib.Path:
    """Where a CLI keeps its chunks. The committed folder (``default``, under ``data/chunks``) holds chunks of the
    committed configuration only: another configuration (a smoke run, a subset) uses ``requested`` or, by default, a
    scratch folder beside its ``out`` (``<out>.chunks``); naming a folder under ``data/chunks`` for it is refused."""
    from .data import DATA_DIR

    if committed:
        return pathlib.Path(requested or default).expanduser()
    if requested is None:
        return pathlib.Path(str(pathlib.Path(out).expanduser()).rstrip("/") + ".chunks")
    requested = pathlib.Path(requested).expanduser()
    if _inside(requested, DATA_DIR / "chunks"):
        raise ValueError(f"the chunk folder {requested} is inside {DATA_DIR / 'chunks'}, which keeps the committed studies' chunks, "
                         "but this run is not the committed configuration; give it a scratch folder (or leave it "
                         "out: the chunks then go beside --out)")
    return requested
