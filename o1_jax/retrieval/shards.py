"""Corpus embeddings in fixed-size shards: written as they are encoded, resumed, merged into an `Index`.

A corpus of N documents (ids in file order) is cut into S = ceil(N / shard_size) shards; shard s
is always positions [s * shard_size, (s + 1) * shard_size), whatever the number of processes.
Process I of P encodes the shards s with s % P == I (`build_shards`), so no file is written by two
processes, and `merge_shards` concatenates them in corpus order into an `Index`. The encoder is a
callable (documents -> float32 [n, D]); this module holds no model code.

A shards folder holds, for each shard s (every file written whole under a temporary name, then
renamed; the manifest last, so a shard without a manifest that verifies is unfinished):

  shard-00000.npy        float32 [n, D] embeddings, in corpus order
  shard-00000.ids.json   the n document ids (a JSON list)
  shard-00000.json       manifest: shard index, num_docs, first / last corpus position, dim, the
                         sha256 and size of both files, and the digest of the build settings
  build-process-I-of-P.json   one per build process, written by it alone: the settings (model
                         fingerprint, encoding options, corpus: number of docs and sha256 of its ids
                         and of its texts, shard_size), the corpus path, the sha256 of each shard's
                         expected ids, and when finished, documents encoded, seconds, documents/s

A rerun with the same settings reuses every shard that verifies (hashes, shapes, ids equal to the
corpus slice) and re-encodes the others, logging why; a rerun with other settings is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from o1_jax.files import atomic_open, atomic_write_bytes, atomic_write_json
from o1_jax.retrieval.vector_index import Index

FORMAT = "o1_jax.retrieval.shards"
# Bump when the layout changes; a folder of another version is refused, never mixed.
FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 50_000
_SHARD_NAME = re.compile(r"^shard-(\d+)\.(npy|ids\.json|json)$")
_BUILD_NAME = re.compile(r"^build-process-(\d+)-of-(\d+)\.json$")
# atomic_open's temporary siblings (".NAME.tmp-PID-HEX"), left behind by a killed process.
_TEMP_NAME = re.compile(r"^\.(shard-\d+\.(npy|ids\.json|json)|build-process-\d+-of-\d+\.json)\.tmp-")
_HASH_BLOCK = 1 << 22


class ShardError(ValueError):
    """A shards folder that is incomplete, damaged, or from a build with other settings."""


@dataclasses.dataclass(frozen=True)
class ShardPaths:
    vectors: pathlib.Path
    ids: pathlib.Path
    manifest: pathlib.Path

    def all(self) -> tuple[pathlib.Path, ...]:
        return (self.vectors, self.ids, self.manifest)


@dataclasses.dataclass(frozen=True)
class BuildReport:
    """What one `build_shards` call did; `docs_per_s` is None when every shard was reused."""
    build_file: pathlib.Path
    num_shards: int
    encoded_shards: list[int]
    reused_shards: list[int]
    encoded_docs: int
    seconds: float
    docs_per_s: float | None


# ----------------------------------------------------------------------------- layout


def shard_count(num_docs: int, shard_size: int) -> int:
    return math.ceil(num_docs / shard_size)


def shard_bounds(shard: int, num_docs: int, shard_size: int) -> tuple[int, int]:
    """Corpus positions [start, stop) of `shard`."""
    start = shard * shard_size
    return start, min(start + shard_size, num_docs)


def owned_shards(num_shards: int, process_index: int, process_count: int) -> list[int]:
    return list(range(process_index, num_shards, process_count))


def shard_paths(folder: str | os.PathLike, shard: int) -> ShardPaths:
    base = pathlib.Path(folder) / f"shard-{shard:05d}"
    return ShardPaths(base.with_name(base.name + ".npy"), base.with_name(base.name + ".ids.json"),
                      base.with_name(base.name + ".json"))


def build_file_path(folder: str | os.PathLike, process_index: int, process_count: int) -> pathlib.Path:
    return pathlib.Path(folder) / f"build-process-{process_index}-of-{process_count}.json"


def _is_shards_file(name: str) -> bool:
    return bool(_SHARD_NAME.match(name) or _BUILD_NAME.match(name) or _TEMP_NAME.match(name))


def check_shards_folder(folder: str | os.PathLike) -> None:
    """Raises unless `folder` is absent, empty, or holds only the files of a shards folder, so that a
    build never writes into (or later deletes from) a folder of other things."""
    folder = pathlib.Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ShardError(f"{folder}: exists and is not a folder (expected a folder of embedding shards)")
    for path in sorted(folder.iterdir()):
        # By name only: another build process's temporary file may be renamed away meanwhile.
        if not _is_shards_file(path.name):
            raise ShardError(f"{folder}: holds {path.name}, which is not a file of an index build's shards; "
                             "pass a new or empty folder, or one an earlier build wrote, as the shards folder")


def remove_shards(folder: str | os.PathLike) -> None:
    """Deletes the shards folder's own files (nothing else), then the folder if that emptied it."""
    folder = pathlib.Path(folder)
    for path in sorted(folder.iterdir()):
        if path.is_file() and _is_shards_file(path.name):
            path.unlink()
    with contextlib.suppress(OSError):  # something else in it: keep the folder
        folder.rmdir()


# ----------------------------------------------------------------------------- settings


def ids_sha256(ids: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode("utf-8")).hexdigest()


def docs_sha256(ids: Sequence[str], docs: Sequence[Any]) -> str:
    """sha256 of every (id, document): a corpus whose texts were edited under the same ids differs."""
    h = hashlib.sha256()
    for doc_id, doc in zip(ids, docs):
        h.update(json.dumps([doc_id, doc], sort_keys=True).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def build_settings(ids: Sequence[str], docs: Sequence[Any], *, shard_size: int, embedding_info: Mapping[str, Any],
                   encode_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What every shard of a folder must share: a resume that differs in any of it is refused."""
    return {
        "embedding_info": dict(embedding_info),  # goes into the index (the model fingerprint, ...)
        "encode_options": dict(encode_options or {}),  # changes the vectors but is not the model (dtype)
        "corpus": {"num_docs": len(ids), "ids_sha256": ids_sha256(ids), "docs_sha256": docs_sha256(ids, docs)},
        "shard_size": shard_size,
    }


def settings_sha256(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


def _settings_difference(old: Mapping[str, Any], new: Mapping[str, Any], them: str = "this run") -> str | None:
    """The first way `new` (of `them`) differs from `old`, as a clause naming the key; None when equal."""
    if old.get("shard_size") != new["shard_size"]:
        return f"shard_size {old.get('shard_size')!r}, {them} asks for shard_size {new['shard_size']!r}"
    for group, whose in (("embedding_info", f"{them}'s model gives"), ("encode_options", f"{them} asks for")):
        was, now = old.get(group) or {}, new[group]
        for key in sorted(set(was) | set(now)):
            if was.get(key) != now.get(key):
                return f"{key}={was.get(key)!r}, {whose} {key}={now.get(key)!r}"
    was, now = old.get("corpus") or {}, new["corpus"]
    if was.get("num_docs") != now["num_docs"]:
        return f"a corpus of {was.get('num_docs')} documents, {them}'s corpus has {now['num_docs']}"
    if was.get("ids_sha256") != now["ids_sha256"]:
        return (f"a corpus whose ids have sha256 {str(was.get('ids_sha256'))[:16]}..., {them}'s corpus "
                f"has other ids or another order (sha256 {now['ids_sha256'][:16]}...)")
    if was.get("docs_sha256") != now["docs_sha256"]:
        return f"a corpus with the same ids as {them}'s but other titles or texts"
    return None


def read_build_files(folder: str | os.PathLike) -> dict[pathlib.Path, dict]:
    """Every build-process-I-of-P.json in `folder`, by path (sorted)."""
    folder = pathlib.Path(folder)
    found = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        if not _BUILD_NAME.match(path.name):
            continue
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"{path}: is not valid JSON ({e}); expected the description of a build process") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT or not isinstance(info.get("settings"), dict):
            raise ShardError(f"{path}: does not describe an index build (expected format {FORMAT!r} with 'settings')")
        if info.get("format_version") != FORMAT_VERSION:
            raise ShardError(f"{path}: has format_version {info.get('format_version')!r}, this code reads "
                             f"{FORMAT_VERSION}; delete {folder} to encode the corpus afresh")
        found[path] = info
    return found


def check_same_settings(folder: str | os.PathLike, settings: Mapping[str, Any]) -> None:
    """Raises, naming the file and what differs, when an earlier build of `folder` had other settings."""
    for path, info in read_build_files(folder).items():
        difference = _settings_difference(info["settings"], settings)
        if difference:
            raise ShardError(f"{path}: these shards were built with {difference}; rerun with the same model, "
                             f"corpus and shard size, or delete {pathlib.Path(folder)} (or pass another shards "
                             "folder) to encode afresh")


# ----------------------------------------------------------------------------- one shard


class _HashingWriter:
    """A write-only file object that hashes what passes through it, so a shard is hashed as written."""

    def __init__(self, f):
        self._f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.size += len(view)
        return self._f.write(view)


def _file_sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _checked_embeddings(embeddings: Any, shard: int, ids: Sequence[str]) -> np.ndarray:
    arr = np.asarray(embeddings)
    if arr.ndim != 2 or arr.shape[0] != len(ids) or arr.shape[1] == 0:
        raise ValueError(f"the encoder returned shape {arr.shape} for shard {shard}'s {len(ids)} documents; "
                         f"expected [{len(ids)}, dim]")
    if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == "bfloat16"):
        raise ValueError(f"the encoder returned dtype {arr.dtype} for shard {shard}; expected floating point")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"the encoder returned NaN or infinity for document {ids[int(np.flatnonzero(bad)[0])]!r} "
                         f"of shard {shard}; expected finite embeddings")
    return arr


def write_shard(folder: str | os.PathLike, shard: int, first: int, ids: Sequence[str], embeddings: Any,
                digest: str) -> dict[str, Any]:
    """Writes shard `shard` (corpus positions first .. first + len(ids) - 1); returns its manifest."""
    ids = list(ids)
    vectors = _checked_embeddings(embeddings, shard, ids)
    paths = shard_paths(folder, shard)
    # The old manifest goes first: until the new one is written the shard reads as unfinished,
    # never as the old shard with new files.
    paths.manifest.unlink(missing_ok=True)
    for path in paths.vectors.parent.glob(f".{paths.vectors.stem}.*.tmp-*"):  # left by a killed writer of this shard
        path.unlink(missing_ok=True)
    with atomic_open(paths.vectors, "wb") as f:
        writer = _HashingWriter(f)
        np.save(writer, vectors, allow_pickle=False)
    ids_bytes = json.dumps(ids).encode("utf-8")
    atomic_write_bytes(paths.ids, ids_bytes)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "shard": shard,
        "num_docs": len(ids),
        "first": first,
        "last": first + len(ids) - 1,
        "dim": int(vectors.shape[1]),
        "dtype": "float32",
        "settings_sha256": digest,
        "files": {
            paths.vectors.name: {"bytes": writer.size, "sha256": writer.sha256.hexdigest()},
            paths.ids.name: {"bytes": len(ids_bytes), "sha256": hashlib.sha256(ids_bytes).hexdigest()},
        },
    }
    atomic_write_json(paths.manifest, manifest)  # last: its presence marks a finished shard
    return manifest


def shard_started(folder: str | os.PathLike, shard: int) -> bool:
    """Any of the shard's files is there (a finished, partial or damaged shard, not a fresh one)."""
    return any(p.exists() for p in shard_paths(folder, shard).all())


def _manifest_problem(paths: ShardPaths, shard: int, first: int, num_docs: int, digest: str) -> tuple[str | None, dict]:
    if not paths.manifest.is_file():
        return f"{paths.manifest}: missing, so shard {shard} was not finished", {}
    try:
        manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{paths.manifest}: is not valid JSON ({e})", {}
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"{paths.manifest}: is not a shard manifest (expected format {FORMAT!r})", {}
    if manifest.get("format_version") != FORMAT_VERSION:
        return f"{paths.manifest}: has format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}", {}
    if manifest.get("settings_sha256") != digest:
        return f"{paths.manifest}: was built with other settings (model, corpus or shard size)", {}
    want = {"shard": shard, "num_docs": num_docs, "first": first, "last": first + num_docs - 1, "dtype": "float32"}
    for key, value in want.items():
        if manifest.get(key) != value:
            return f"{paths.manifest}: has {key}={manifest.get(key)!r}, expected {value!r}", {}
    dim, files = manifest.get("dim"), manifest.get("files")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        return f"{paths.manifest}: has dim={dim!r}, expected a positive integer", {}
    if not isinstance(files, dict) or sorted(files) != sorted([paths.vectors.name, paths.ids.name]):
        return f"{paths.manifest}: should list the files {paths.vectors.name} and {paths.ids.name}", {}
    return None, manifest


def _file_problem(path: pathlib.Path, meta: Any, manifest_path: pathlib.Path) -> str | None:
    if not isinstance(meta, dict):
        return f"{manifest_path}: its entry for {path.name} should be {{'bytes', 'sha256'}}, got {meta!r}"
    if not path.is_file():
        return f"{path}: missing (its manifest {manifest_path.name} lists it)"
    size = path.stat().st_size
    if size != meta.get("bytes"):
        return f"{path}: is {size} bytes, its manifest {manifest_path.name} says {meta.get('bytes')!r}"
    if _file_sha256(path) != meta.get("sha256"):
        return f"{path}: its sha256 differs from its manifest {manifest_path.name}'s (the file is damaged)"
    return None


def _contents_problem(paths: ShardPaths, manifest: dict) -> str | None:
    try:
        vectors = np.load(paths.vectors, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        return f"{paths.vectors}: is not a readable .npy array ({e})"
    want = (manifest["num_docs"], manifest["dim"])
    if vectors.dtype != np.float32 or vectors.shape != want:
        return f"{paths.vectors}: holds {vectors.dtype} {vectors.shape}, expected float32 {want}"
    del vectors
    try:
        ids = json.loads(paths.ids.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{paths.ids}: is not valid JSON ({e})"
    if not isinstance(ids, list) or len(ids) != manifest["num_docs"] or not all(isinstance(d, str) for d in ids):
        return f"{paths.ids}: should be a JSON list of {manifest['num_docs']} string ids"
    return None


def shard_problem(folder: str | os.PathLike, shard: int, first: int, num_docs: int, digest: str,
                  expected_ids_sha256: str | None = None) -> str | None:
    """Why shard `shard` cannot be used (one sentence naming the file), or None when it verifies:
    a manifest of these settings and positions, both files of the size and sha256 it records, a
    float32 [num_docs, dim] array, num_docs string ids, equal to the corpus slice when
    `expected_ids_sha256` is given."""
    paths = shard_paths(folder, shard)
    problem, manifest = _manifest_problem(paths, shard, first, num_docs, digest)
    if problem:
        return problem
    for path in (paths.vectors, paths.ids):
        problem = _file_problem(path, manifest["files"][path.name], paths.manifest)
        if problem:
            return problem
    problem = _contents_problem(paths, manifest)
    if problem:
        return problem
    if expected_ids_sha256 is not None and ids_sha256(read_shard_ids(folder, shard)) != expected_ids_sha256:
        return f"{paths.ids}: its ids are not the corpus's documents {first}..{first + num_docs - 1}"
    return None


def read_shard_ids(folder: str | os.PathLike, shard: int) -> list[str]:
    return json.loads(shard_paths(folder, shard).ids.read_text(encoding="utf-8"))


def read_shard_dim(folder: str | os.PathLike, shard: int) -> int:
    return json.loads(shard_paths(folder, shard).manifest.read_text(encoding="utf-8"))["dim"]


# ----------------------------------------------------------------------------- building


def _check_process(shard_size: int, process_index: int, process_count: int) -> None:
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    if isinstance(process_count, bool) or not isinstance(process_count, int) or process_count < 1:
        raise ValueError(f"process_count must be a positive integer, got {process_count!r}")
    if isinstance(process_index, bool) or not isinstance(process_index, int) or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count - 1}] for process_count {process_count}, "
                         f"got {process_index!r}")


def _write_build_file(path: pathlib.Path, settings: dict, corpus_path: str, process_index: int,
                      process_count: int, shard_ids: list[str], **progress) -> None:
    atomic_write_json(path, {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "corpus_path": corpus_path,
        "process_index": process_index,
        "process_count": process_count,
        "shard_ids_sha256": shard_ids,  # what merge checks each shard's ids against
        **progress,
    })


def build_shards(folder: str | os.PathLike, ids: Sequence[str], docs: Sequence[Any],
                 encode: Callable[[Sequence[Any]], np.ndarray], *, shard_size: int = DEFAULT_SHARD_SIZE,
                 embedding_info: Mapping[str, Any], encode_options: Mapping[str, Any] | None = None,
                 corpus_path: str | os.PathLike = "", process_index: int = 0, process_count: int = 1,
                 log: Callable[[str], None] = print) -> BuildReport:
    """Encodes this process's shards of the corpus (`ids`, `docs` in corpus order) into `folder`,
    one `encode(docs)` call per shard, reusing the shards that verify; see the module docstring."""
    _check_process(shard_size, process_index, process_count)
    if len(ids) != len(docs):
        raise ValueError(f"got {len(ids)} ids for {len(docs)} documents; expected one id per document")
    if not ids:
        raise ValueError("cannot encode an empty corpus (0 documents)")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(d for d in ids if d in seen or seen.add(d))
        raise ValueError(f"the corpus holds the id {dup!r} more than once; expected distinct ids")
    folder = pathlib.Path(folder)
    check_shards_folder(folder)
    settings = build_settings(ids, docs, shard_size=shard_size, embedding_info=embedding_info,
                              encode_options=encode_options)
    check_same_settings(folder, settings)
    digest = settings_sha256(settings)
    num_shards = shard_count(len(ids), shard_size)
    shard_ids = [ids_sha256(ids[slice(*shard_bounds(s, len(ids), shard_size))]) for s in range(num_shards)]
    build_file = build_file_path(folder, process_index, process_count)
    record = dict(settings=settings, corpus_path=os.fspath(corpus_path), process_index=process_index,
                  process_count=process_count, shard_ids=shard_ids)
    _write_build_file(build_file, **record, status="encoding")  # a concurrent or later run checks against it

    mine = owned_shards(num_shards, process_index, process_count)
    encoded, reused, encoded_docs = [], [], 0
    start = time.perf_counter()
    for s in mine:
        first, stop = shard_bounds(s, len(ids), shard_size)
        problem = shard_problem(folder, s, first, stop - first, digest, shard_ids[s])
        if problem is None:
            reused.append(s)
            continue
        if shard_started(folder, s):
            log(f"{problem}; re-encoding shard {s}")
        t = time.perf_counter()
        write_shard(folder, s, first, ids[first:stop], encode(docs[first:stop]), digest)
        encoded.append(s)
        encoded_docs += stop - first
        log(f"shard {s} of {num_shards}: {stop - first} documents in {time.perf_counter() - t:.1f} s "
            f"({len(encoded) + len(reused)}/{len(mine)} of process {process_index}'s shards)")
    seconds = time.perf_counter() - start
    docs_per_s = encoded_docs / seconds if encoded_docs else None
    _write_build_file(build_file, **record, status="finished", encoded_shards=encoded, reused_shards=reused,
                      encoded_docs=encoded_docs, seconds=round(seconds, 3),
                      docs_per_s=None if docs_per_s is None else round(docs_per_s, 3))
    rate = f" ({docs_per_s:.2f} documents/s)" if docs_per_s else ""
    log(f"process {process_index} of {process_count}: encoded {encoded_docs} documents in {len(encoded)} shards "
        f"in {seconds:.1f} s{rate}; reused {len(reused)} verified shards -> {folder}")
    return BuildReport(build_file, num_shards, encoded, reused, encoded_docs, seconds, docs_per_s)


# ----------------------------------------------------------------------------- merging


def _merge_settings(folder: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """The build file every other build file of `folder` agrees with."""
    builds = read_build_files(folder)
    if not builds:
        if not folder.is_dir():
            raise ShardError(f"{folder}: no such folder (expected the shards folder of an index build)")
        raise ShardError(f"{folder}: has no build-process-I-of-P.json, so it is not the shards folder of an index build")
    (path, info), *others = builds.items()
    for other, other_info in others:
        difference = _settings_difference(info["settings"], other_info["settings"], them=other.name)
        if difference:
            raise ShardError(f"{path}: was built with {difference}, so the folder mixes two builds; "
                             f"delete {folder} and encode afresh")
    return path, info


def merged_shards(folder: str | os.PathLike) -> tuple[np.ndarray, list[str], dict]:
    """(embeddings [N, D] in corpus order, ids, embedding_info) of a finished shards folder, after
    checking that every shard is there and verifies and that every corpus id is there exactly once."""
    folder = pathlib.Path(folder)
    build_file, info = _merge_settings(folder)
    settings = info["settings"]
    num_docs, shard_size = settings["corpus"]["num_docs"], settings["shard_size"]
    num_shards, digest = shard_count(num_docs, shard_size), settings_sha256(settings)
    expected_ids = info.get("shard_ids_sha256")
    if not isinstance(expected_ids, list) or len(expected_ids) != num_shards:
        raise ShardError(f"{build_file}: 'shard_ids_sha256' should list {num_shards} hashes, one per shard")
    beyond = sorted(p for p in folder.iterdir() if (m := _SHARD_NAME.match(p.name)) and int(m.group(1)) >= num_shards)
    if beyond:
        raise ShardError(f"{beyond[0]}: is beyond the corpus's {num_shards} shards of {shard_size} documents "
                         f"({build_file.name}), so the folder mixes two builds")
    owner: dict[str, int] = {}
    for s in range(num_shards):
        first, stop = shard_bounds(s, num_docs, shard_size)
        if not shard_paths(folder, s).manifest.exists():
            raise ShardError(f"{shard_paths(folder, s).manifest}: missing, so shard {s} of {num_shards} (corpus "
                             f"positions {first}..{stop - 1}) is not finished; rerun the build process that owns it")
        problem = shard_problem(folder, s, first, stop - first, digest)
        if problem:
            raise ShardError(f"{problem}; rerun the build to re-encode shard {s} before merging")
        for doc_id in read_shard_ids(folder, s):
            if doc_id in owner:
                raise ShardError(f"{shard_paths(folder, s).ids}: the id {doc_id!r} is also in shard {owner[doc_id]}; "
                                 "expected every corpus id exactly once")
            owner[doc_id] = s
    ids: list[str] = []
    for s in range(num_shards):
        shard = read_shard_ids(folder, s)
        if ids_sha256(shard) != expected_ids[s]:
            first, stop = shard_bounds(s, num_docs, shard_size)
            raise ShardError(f"{shard_paths(folder, s).ids}: its ids are not the corpus's documents {first}..{stop - 1} "
                             f"recorded in {build_file.name} (first id {shard[0]!r})")
        ids.extend(shard)
    if len(ids) != num_docs or ids_sha256(ids) != settings["corpus"]["ids_sha256"]:  # guards the checks above
        raise ShardError(f"{folder}: the shards hold {len(ids)} ids, not the corpus's {num_docs} of {build_file.name}")
    dims = {s: read_shard_dim(folder, s) for s in range(num_shards)}
    if len(set(dims.values())) > 1:
        s = next(s for s in dims if dims[s] != dims[0])
        raise ShardError(f"{shard_paths(folder, s).vectors}: holds {dims[s]}-dim embeddings, shard 0 {dims[0]}-dim")
    embeddings = np.empty((num_docs, dims[0]), np.float32)  # filled shard by shard: no second copy
    for s in range(num_shards):
        first, stop = shard_bounds(s, num_docs, shard_size)
        embeddings[first:stop] = np.load(shard_paths(folder, s).vectors, mmap_mode="r", allow_pickle=False)
    return embeddings, ids, settings["embedding_info"]


def merge_shards(folder: str | os.PathLike, out: str | os.PathLike, *, mode: str = "auto",
                 params: Mapping[str, Any] | None = None, overwrite: bool = False) -> Index:
    """Builds the `Index` of a finished shards folder (see `merged_shards`) and saves it to `out`."""
    embeddings, ids, embedding_info = merged_shards(folder)
    index = Index.build(embeddings, ids, mode=mode, params=params, embedding_info=embedding_info)
    index.save(out, overwrite=overwrite)
    return index
