"""File publishing: every writer in o1_jax goes through here, so nothing is ever half-written.

* `atomic_open` / `atomic_write_bytes` / `atomic_write_text` / `atomic_write_json`: a file is
  written under a unique temporary name beside its target, fsync'd, then renamed onto it (a URL:
  one object is written whole, then copied onto its name, which appears whole or not at all).
* `staged_folder`: a folder is built in a hidden sibling and renamed onto its target at the end,
  replacing what was there only once the new one is complete; it gets the permissions of a folder
  made with `mkdir` (mkdtemp's are private), and is removed on any error or Ctrl-C.
* `publish_remote_folder` / `local_copy`: an object store cannot rename a folder, so a remote
  folder is written file by file with a commit file last, and read back only when it has one.
* `is_remote` and `local_cache_for`: URLs (gs://, s3://) and this machine's cache for the
  memory-mapped data of a remote folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import uuid
from typing import Any, Callable, Iterator

from etils import epath

LOCAL_CACHE_ROOT = "~/.cache/o1_jax"
# Written last into a remote folder (as orbax marks finished checkpoints on GCS): a folder
# without it is a cut-off upload.
COMMIT_FILE = "commit_success.txt"


def is_remote(path: str | os.PathLike) -> bool:
    """A URL (gs://, s3://, ...): no memory maps, no appends, no atomic folder renames there."""
    return "://" in os.fspath(path)


def local_cache_for(url: str | os.PathLike, kind: str) -> pathlib.Path:
    """A folder on this machine's disk for a remote folder's memory-mapped caches (`kind`: data,
    eval), named by the URL so that a restart on the same machine reuses it."""
    digest = hashlib.sha256(os.fspath(url).encode()).hexdigest()[:16]
    return pathlib.Path(LOCAL_CACHE_ROOT).expanduser() / kind / digest


def _unique_sibling(path: pathlib.Path, tag: str) -> pathlib.Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """A file object on a temporary name beside local `path`, renamed onto it only if the block succeeds."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Plain open() (not mkstemp), so the file gets the usual umask permissions rather than 0600.
    tmp = _unique_sibling(path, "tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`data` onto `path` (a local path or a URL), whole or not at all."""
    if not is_remote(path):
        with atomic_open(path, "wb") as f:
            f.write(data)
        return
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    tmp.replace(path)  # one object copied onto its name


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_folder(staging: pathlib.Path, out: pathlib.Path,
                   may_replace: Callable[[pathlib.Path], bool] | None = None) -> None:
    """Renames the finished `staging` folder onto `out`; an existing `out` is moved aside first and
    deleted only once the new one is in place (put back if the rename fails). `may_replace(out)`
    False refuses to touch an existing `out` (FileExistsError)."""
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp made it private; a published folder is meant to be read
    if not (out.exists() or out.is_symlink()):
        os.replace(staging, out)
        return
    if may_replace is not None and not may_replace(out):
        raise FileExistsError(f"{out}: exists and is not a folder this command wrote (refusing to replace it)")
    old = _unique_sibling(out, "old")
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike,
                  may_replace: Callable[[pathlib.Path], bool] | None = None) -> Iterator[pathlib.Path]:
    """Yields an empty hidden sibling of local `out` to fill; published onto `out` when the block
    succeeds (see `replace_folder`), removed when it raises."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        yield staging
        replace_folder(staging, out, may_replace)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish_remote_folder(local: pathlib.Path, out: epath.Path) -> None:
    """Copies the files of `local` into the remote folder `out`, replacing its files; the commit
    file goes first and comes back last, so a cut-off upload is never read as complete."""
    (out / COMMIT_FILE).unlink(missing_ok=True)
    out.rmtree(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(local.iterdir()):
        (out / f.name).write_bytes(f.read_bytes())
    (out / COMMIT_FILE).write_text("")


def publish_folder(out: str | os.PathLike, fill: Callable[[pathlib.Path], Any]) -> None:
    """`fill(folder)` writes a flat folder's files; they appear at `out` (local or a URL) all at once."""
    if not is_remote(out):
        with staged_folder(out) as staging:
            fill(staging)
        return
    with tempfile.TemporaryDirectory(prefix="o1_jax_publish.") as tmp:
        fill(pathlib.Path(tmp))
        publish_remote_folder(pathlib.Path(tmp), epath.Path(out))


@contextlib.contextmanager
def local_copy(folder: str | os.PathLike) -> Iterator[pathlib.Path]:
    """`folder` itself when local; a remote flat folder written by `publish_folder` copied to a
    temporary local one (refused when its commit file is missing: the upload was cut off)."""
    if not is_remote(folder):
        yield pathlib.Path(folder)
        return
    folder = epath.Path(folder)
    if not (folder / COMMIT_FILE).exists():
        raise FileNotFoundError(f"{folder}: no {COMMIT_FILE}, so its upload was cut off (expected a complete "
                                "folder; rerunning the command that wrote it rewrites it)")
    with tempfile.TemporaryDirectory(prefix="o1_jax_copy.") as tmp:
        for f in folder.iterdir():
            if f.name != COMMIT_FILE:
                (pathlib.Path(tmp) / f.name).write_bytes(f.read_bytes())
        yield pathlib.Path(tmp)
