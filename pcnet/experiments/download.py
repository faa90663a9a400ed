"""One download helper: progress bar, atomic write, sha256 check (recorded on first download when none is published).

Hashes recorded on first download live in ``DOWNLOADS.json`` beside the file::

    {"format": 1, "files": {"NAME": {"url": ..., "sha256": ..., "bytes": ..., "date": ..., "published": false}}}

``published: false`` says the hash was not published by the file's authors but recorded by pcnet the first time
the file was downloaded: it detects later corruption or a changed file, not a file that was wrong from the start.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import pathlib
import urllib.request
import warnings

from .files import atomic_path, sha256_file, write_text_atomic

__all__ = ["download", "recorded_sha256", "REGISTRY_NAME"]

REGISTRY_NAME = "DOWNLOADS.json"
_CHUNK = 1 << 20


def _registry(folder: pathlib.Path) -> dict:
    path = folder / REGISTRY_NAME
    if not path.exists():
        return {"format": 1, "files": {}}
    return json.loads(path.read_text())


def recorded_sha256(path) -> str | None:
    """The sha256 recorded for ``path`` in its folder's ``DOWNLOADS.json`` (None when there is none)."""
    path = pathlib.Path(path)
    entry = _registry(path.parent)["files"].get(path.name)
    return None if entry is None else entry["sha256"]


def _record(path: pathlib.Path, *, url: str, sha256: str, published: bool) -> None:
    registry = _registry(path.parent)
    registry["files"][path.name] = {"url": url, "sha256": sha256, "bytes": path.stat().st_size, "published": published,
                                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_text_atomic(path.parent / REGISTRY_NAME, json.dumps(registry, indent=2, sort_keys=True) + "\n")


def fetch(url: str, tmp: pathlib.Path, *, progress: bool = True, timeout: float = 60.0,
          algorithm: str = "sha256") -> str:
    """Stream ``url`` into ``tmp`` with a progress bar; returns the hex digest (``algorithm``) of the bytes written."""
    from tqdm.auto import tqdm

    digest = hashlib.new(algorithm)
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
        length = response.headers.get("Content-Length")
        total = int(length) if length else None  # unknown without a Content-Length
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=not progress) as bar:
            for block in iter(lambda: response.read(_CHUNK), b""):
                f.write(block)
                digest.update(block)
                bar.update(len(block))
    return digest.hexdigest()


def download(url: str, path, *, sha256: str | None = None, progress: bool = True,
             timeout: float = 60.0) -> pathlib.Path:
    """Download ``url`` to ``path`` unless it is already there, and check its sha256; returns ``path``.

    ``sha256``: the published hash; when None, the hash recorded on the first download (``DOWNLOADS.json``) is
    used, and the first download records it (with a warning that says so). The file appears only complete and
    checked (written to a temporary file, then renamed); a mismatch leaves nothing behind.
    """
    path = pathlib.Path(path).expanduser()
    expected = sha256 or recorded_sha256(path)
    if path.exists():
        actual = sha256_file(path)
        if expected is not None and actual != expected:
            raise RuntimeError(f"{path} has sha256 {actual}, expected {expected}: the file is corrupt or changed; "
                               f"delete it (and its entry in {path.parent / REGISTRY_NAME}) to download it again")
        return path
    try:
        with atomic_path(path) as tmp:
            actual = fetch(url, tmp, progress=progress, timeout=timeout)
            if expected is not None and actual != expected:
                raise RuntimeError(f"{url} downloaded with sha256 {actual}, expected {expected}: the download is "
                                   f"corrupt or the file changed upstream; nothing was kept. Retry, or check the URL")
    except OSError as err:  # URLError, timeouts, refused connections
        raise RuntimeError(f"could not download {url} ({err}); run on a connected machine (or Colab), or download "
                           f"it yourself and pass the file's path") from err
    if sha256 is None and expected is None:
        warnings.warn(f"no published sha256 for {url}: recorded {actual} on this first download in "
                      f"{path.parent / REGISTRY_NAME}; later loads are checked against it", stacklevel=2)
    _record(path, url=url, sha256=actual, published=sha256 is not None)
    return path
