"""File safety, in one place: sha256 of a file, atomic writes, an inter-process lock, path checks.

* :func:`atomic_path` / :func:`write_text_atomic`: write to a unique temporary file in the target's folder,
  fsync it, then ``os.replace`` it over the target; on any error the temporary file vanishes, so a reader
  sees the old file or the new one, never half of one.
* :func:`staging`: several files replaced all-or-nothing. Each is staged (written, fsynced) under a temporary
  name; a journal listing them is written atomically (the commit point), then each replaces its target.
  A process that stops after the commit leaves the journal, and :func:`roll_forward` (run by the next writer
  or reader, under the lock) finishes the replacements: the files are all old or all new.
* :func:`locked`: an exclusive lock held across processes (``filelock``, a dependency of torch) on
  ``<path>.lock``, for read-modify-write cycles such as a manifest update.
* :func:`safe_name`: a user string that becomes part of a file name (seed, corruption, model name).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import tempfile

LOCK_TIMEOUT_S = 600  # a lock held longer than this is a stuck process: say so instead of waiting forever


def file_digest(path, *, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``algorithm``: any name of :mod:`hashlib`, e.g. "sha256", "md5")."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes."""
    return file_digest(path, algorithm="sha256")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a unique temporary path in ``path``'s folder; on success it is fsynced and replaces ``path``,
    on error it is removed (``path`` keeps its old content)."""
    path = pathlib.Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class JournalError(OSError):
    """A save stopped after its commit point and its journal cannot be finished; the message names the journal,
    the target that blocks it and how to clear it."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary(path: pathlib.Path) -> pathlib.Path:
    """A unique temporary file beside ``path``, with the permissions a plain ``open(path, "w")`` would give (mkstemp
    makes 0600 files: saved weights and manifests were unreadable to others on a shared machine)."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file path to write (e.g. {path / 'result.json'})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return pathlib.Path(tmp)


def _fsync(path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


class _Staging:
    def __init__(self, journal: pathlib.Path):
        self.journal, self.pairs = journal, []

    def stage(self, target) -> pathlib.Path:
        """A temporary path to write ``target``'s new content to; it replaces ``target`` at :meth:`commit`."""
        tmp = _temporary(pathlib.Path(target))
        self.pairs.append((tmp, pathlib.Path(target)))
        return tmp

    def commit(self) -> None:
        for tmp, _ in self.pairs:
            _fsync(tmp)
        write_text_atomic(self.journal, json.dumps([[str(t), str(p)] for t, p in self.pairs]))  # the commit point
        roll_forward(self.journal)


@contextlib.contextmanager
def staging(journal):
    """Replace several files all-or-nothing: ``with staging(journal) as s: write s.stage(a), s.stage(b); s.commit()``.

    Hold :func:`locked` around it (and around :func:`roll_forward`) when other processes may write the same files.
    An error before ``commit`` removes the staged files and leaves every target as it was."""
    s = _Staging(pathlib.Path(journal))
    try:
        yield s
    except BaseException:
        if not s.journal.exists():
            for tmp, _ in s.pairs:
                tmp.unlink(missing_ok=True)
        raise


def roll_forward(journal) -> bool:
    """Finish the replacements of a committed :func:`staging` (no-op without a journal); True if there was one."""
    journal = pathlib.Path(journal)
    if not journal.exists():
        return False
    try:
        pairs = json.loads(journal.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise JournalError(f"the save journal {journal} is damaged ({err}); delete it (the files it lists keep their "
                           "content from before that save, or are already new)") from err
    for tmp, target in pairs:
        if os.path.exists(tmp):
            try:
                os.replace(tmp, target)
            except OSError as err:
                raise JournalError(
                    f"an earlier save stopped after its commit point and cannot finish: {target} cannot be replaced "
                    f"({type(err).__name__}: {err}). Fix: move {target} out of the way and run the command again (the "
                    f"save then completes), or abandon that save by deleting {journal} and the staged files it lists "
                    f"(.*.tmp beside each target)") from err
    journal.unlink()
    return True


def write_text_atomic(path, text: str) -> None:
    """Atomically replace ``path`` by ``text``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch_atomic(obj, path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@contextlib.contextmanager
def locked(path, *, timeout: float = LOCK_TIMEOUT_S):
    """Hold an exclusive inter-process lock on ``path`` (the lock file is ``<path>.lock``) for the block."""
    from filelock import FileLock, Timeout

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock", timeout=timeout)
    try:
        lock.acquire()
    except Timeout as err:
        raise TimeoutError(f"waited {timeout:.0f} s for the lock {path}.lock; another process holds it. If none "
                           f"is running, delete that file") from err
    try:
        yield
    finally:
        lock.release()


_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def existing(path, *, kind: str, what: str, fix: str) -> pathlib.Path:
    """``path`` (user-expanded) when it is an existing ``kind`` ("file" or "dir"); else FileNotFoundError
    "<what> <path> is not a <kind>; <fix>"."""
    path = pathlib.Path(path).expanduser()
    if not (path.is_file() if kind == "file" else path.is_dir()):
        raise FileNotFoundError(f"{what} {path} is not a {'file' if kind == 'file' else 'folder'}; {fix}")
    return path


def safe_name(value, *, what: str) -> str:
    """``str(value)`` when it is a plain file-name part (letters, digits, ``_ . + -``, no leading dot or
    ``..``); else a ValueError naming ``what``. Keeps user strings from building paths outside their folder."""
    text = str(value)
    if isinstance(value, bool) or not _SAFE.fullmatch(text) or ".." in text:
        raise ValueError(f"{what} must be a plain name of letters, digits and _ . + - (no '/', '..' or leading "
                         f"dot), got {value!r}")
    return text
