"""A nearest-neighbour index of L2-normalised document embeddings, on ScaNN.

Scores are inner products, which equal cosine similarities because the documents
are unit vectors (checked at build time). Two back-ends, both ScaNN:

  exact  brute-force float32 scoring of every document (ScaNN `score_brute_force`);
  scann  a k-means tree over the documents (only `num_leaves_to_search` of the
         `num_leaves` partitions are scored per query), anisotropic 4-bit asymmetric
         hashing (AH) of the residuals to score the candidates in those partitions,
         then exact float32 re-scoring of the best `reorder` of them.

`mode="auto"` takes exact search below `AUTO_EXACT_MAX_DOCS` documents, where it is
fast enough and recall is 1, and scann above. The scann parameters follow the
corpus size (`default_params`); `params` overrides any of them, and `search` can
change `leaves_to_search` / `reorder` per call, without rebuilding.

On disk an index is one folder, written to a temporary sibling and renamed, so a
folder with the index's name is always complete:

  index_info.json   format version, dim, size, mode, params, embedding_info (model
                    fingerprint, pooling, ...) and the name and size of every file
  doc_ids.json      document ids, in index order
  scann_assets.pbtxt, scann_config.pb, dataset.npy, ...   ScaNN's own `serialize`
                    output, with paths relative to the folder so it can be moved

`exact_search` (numpy) and `recall_at_k` are the ground truth the index is tested
and benchmarked against.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from o1_jax.files import atomic_write_json, staged_folder

INFO_FILE = "index_info.json"
DOC_IDS_FILE = "doc_ids.json"
FORMAT = "o1_jax.retrieval.index"  # the format's name in index_info.json, kept since the module was renamed
# Bump when the folder layout changes; `load` refuses other versions.
FORMAT_VERSION = 1
MODES = ("auto", "exact", "scann")
# Below this many documents "auto" uses exact search: a 20k x 768 float32 scan is
# ~15 MFLOP a query (well under a millisecond), and recall is 1.
AUTO_EXACT_MAX_DOCS = 20_000
# Documents whose L2 norm is further than this from 1 are refused: the scores are
# meant to be cosines, and bfloat16 round trips stay well within it.
NORM_TOLERANCE = 1e-2
# Rows checked at a time for NaN/inf and norms, to keep the temporaries small.
_CHECK_ROWS = 1 << 16

# The keys `params` may set for mode="scann" (see default_params for their meaning).
SCANN_PARAM_KEYS = (
    "num_leaves",
    "num_leaves_to_search",
    "training_sample_size",
    "training_iterations",
    "min_partition_size",
    "soar_lambda",
    "dimensions_per_block",
    "anisotropic_quantization_threshold",
    "hash_type",
    "reorder",
)


class IndexFolderError(ValueError):
    """An index folder that is missing, incomplete, or does not match what the caller expects."""


def default_params(num_docs: int, dim: int) -> dict[str, Any]:
    """ScaNN tree + AH + reorder parameters for a corpus of `num_docs` x `dim`.

    num_leaves ~ sqrt(N) keeps partition scoring and in-partition scoring in
    balance (both ~sqrt(N) per leaf searched). num_leaves_to_search ~ 2 sqrt(num_leaves)
    (at least 8): the fraction of leaves holding a query's true neighbours shrinks as
    leaves grow. Measured (BENCHMARKS.md "Index"): real all-MiniLM-L6-v2 SciFact
    embeddings with their real queries need 17 of 72 leaves (24%) for recall@10 0.95;
    1M clustered vectors need 1-10 of 1000 for 0.95 and 3-50 for 0.99, depending on
    how tight the clusters are. This rule gives 17 of 72, 24 of 141 at 20k documents
    and 64 of 1000 at 1M, erring towards recall.
    Anisotropic threshold 0.2 and 2 dimensions per 4-bit block are ScaNN's
    recommended dot-product settings; a 250-candidate exact reorder makes the
    returned scores exact and recovers what the 4-bit scores misorder.
    """
    del dim  # the same settings serve the 256..1024-dim embeddings we index
    num_leaves = max(1, min(round(math.sqrt(num_docs)), num_docs // 20 or 1))
    num_leaves_to_search = min(num_leaves, max(8, math.ceil(2 * math.sqrt(num_leaves))))
    return {
        "num_leaves": num_leaves,
        "num_leaves_to_search": num_leaves_to_search,
        # k-means and AH codebooks train on a sample; 100k is ScaNN's default and
        # is ~100 points a leaf at 1M documents.
        "training_sample_size": min(num_docs, 100_000),
        "training_iterations": 12,
        "min_partition_size": 20,
        # SOAR spilling (each document also in a second, "orthogonal" leaf; ScaNN
        # suggests lambda 1.5) raises recall at a given num_leaves_to_search (SciFact,
        # 8 of 72 leaves: 0.87 -> 0.95) but doubles the hashed data; off by default.
        "soar_lambda": None,
        "dimensions_per_block": 2,
        "anisotropic_quantization_threshold": 0.2,
        "hash_type": "lut16",
        "reorder": min(num_docs, 250),
    }


def _as_matrix(x: Any, what: str, dim: int | None = None) -> np.ndarray:
    """`x` as a C-contiguous float32 [rows, dim] array, or a clear ValueError."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D [rows, dim] array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == "bfloat16"):
        raise ValueError(f"{what} must hold floating-point numbers, got dtype {arr.dtype}")
    if arr.shape[1] == 0:
        raise ValueError(f"{what} has 0 columns; expected embeddings of at least one dimension")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what} are {arr.shape[1]}-dim but the index holds {dim}-dim embeddings")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    for start in range(0, arr.shape[0], _CHECK_ROWS):
        block = arr[start : start + _CHECK_ROWS]
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            raise ValueError(f"{what} row {row} contains NaN or infinity; expected finite numbers")
    return arr


def _check_normalised(emb: np.ndarray) -> None:
    for start in range(0, emb.shape[0], _CHECK_ROWS):
        norms = np.linalg.norm(emb[start : start + _CHECK_ROWS], axis=1)
        bad = np.abs(norms - 1.0) > NORM_TOLERANCE
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"embeddings row {start + i} has L2 norm {norms[i]:.4g}; the index expects "
                "L2-normalised embeddings (inner product = cosine), so normalise them first"
            )


def _resolve_params(num_docs: int, dim: int, params: Mapping[str, Any] | None) -> dict[str, Any]:
    resolved = default_params(num_docs, dim)
    for key, value in (params or {}).items():
        if key not in SCANN_PARAM_KEYS:
            raise ValueError(f"unknown index param {key!r}; expected one of {', '.join(SCANN_PARAM_KEYS)}")
        resolved[key] = value
    for key in ("num_leaves", "num_leaves_to_search", "training_sample_size", "reorder", "dimensions_per_block"):
        value = resolved[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"index param {key!r} must be a positive integer, got {value!r}")
    if resolved["num_leaves"] > num_docs:
        raise ValueError(f"index param 'num_leaves' is {resolved['num_leaves']} but there are only {num_docs} documents")
    if resolved["num_leaves_to_search"] > resolved["num_leaves"]:
        raise ValueError(
            f"index param 'num_leaves_to_search' ({resolved['num_leaves_to_search']}) exceeds "
            f"'num_leaves' ({resolved['num_leaves']})"
        )
    if resolved["dimensions_per_block"] > dim:
        raise ValueError(f"index param 'dimensions_per_block' ({resolved['dimensions_per_block']}) exceeds dim {dim}")
    soar = resolved["soar_lambda"]
    if soar is not None and (isinstance(soar, bool) or not isinstance(soar, (int, float)) or soar <= 0):
        raise ValueError(f"index param 'soar_lambda' must be None or a positive number, got {soar!r}")
    if resolved["hash_type"] not in ("lut16", "lut256"):
        raise ValueError(f"index param 'hash_type' must be 'lut16' or 'lut256', got {resolved['hash_type']!r}")
    centres = 16 if resolved["hash_type"] == "lut16" else 256
    if num_docs < centres:
        raise ValueError(
            f"mode='scann' needs at least {centres} documents ({resolved['hash_type']} hashing trains {centres} "
            f"centres per block), got {num_docs}; use mode='exact' or 'auto'"
        )
    resolved["training_sample_size"] = min(resolved["training_sample_size"], num_docs)
    resolved["reorder"] = min(resolved["reorder"], num_docs)
    return resolved


def _build_searcher(emb: np.ndarray, mode: str, params: Mapping[str, Any]):
    import scann  # imported here so exact_search / recall_at_k do not need it

    builder = scann.scann_ops_pybind.builder(emb, 10, "dot_product")
    if mode == "exact":
        return builder.score_brute_force().build()
    return (
        builder.tree(
            num_leaves=params["num_leaves"],
            num_leaves_to_search=params["num_leaves_to_search"],
            training_sample_size=params["training_sample_size"],
            training_iterations=params["training_iterations"],
            min_partition_size=params["min_partition_size"],
            soar_lambda=params["soar_lambda"],
        )
        .score_ah(
            params["dimensions_per_block"],
            anisotropic_quantization_threshold=params["anisotropic_quantization_threshold"],
            training_sample_size=params["training_sample_size"],
            hash_type=params["hash_type"],
        )
        .reorder(params["reorder"])
        .build()
    )


class Index:
    """Document embeddings and their ids, searchable by inner product; see the module docstring."""

    def __init__(self, searcher, doc_ids: Sequence[str], dim: int, mode: str, params: dict, embedding_info: dict):
        self._searcher = searcher
        self._doc_ids = np.asarray(list(doc_ids), dtype=object)  # fancy-indexed by ScaNN's result rows
        self.dim = int(dim)
        self.size = len(self._doc_ids)
        self.mode = mode
        self.params = dict(params)
        self.embedding_info = dict(embedding_info)

    def __repr__(self) -> str:
        return f"Index(mode={self.mode!r}, size={self.size}, dim={self.dim}, params={self.params})"

    @property
    def doc_ids(self) -> list[str]:
        return self._doc_ids.tolist()

    # --- building -----------------------------------------------------------------

    @classmethod
    def build(
        cls,
        embeddings: Any,
        doc_ids: Sequence[str],
        *,
        mode: str = "auto",
        params: Mapping[str, Any] | None = None,
        embedding_info: Mapping[str, Any] | None = None,
    ) -> Index:
        """Index `embeddings` [N, D] (L2-normalised) under `doc_ids` (N distinct strings)."""
        if mode not in MODES:
            raise ValueError(f"index mode must be one of {', '.join(MODES)}, got {mode!r}")
        emb = _as_matrix(embeddings, "embeddings")
        n, dim = emb.shape
        if n == 0:
            raise ValueError("cannot build an index of an empty corpus (embeddings has 0 rows)")
        _check_normalised(emb)
        doc_ids = list(doc_ids)
        if len(doc_ids) != n:
            raise ValueError(f"got {len(doc_ids)} doc_ids for {n} embedding rows; expected one id per row")
        for i, doc_id in enumerate(doc_ids):
            if not isinstance(doc_id, str):
                raise ValueError(f"doc_ids[{i}] is {type(doc_id).__name__} {doc_id!r}; expected a string")
        if len(set(doc_ids)) != n:
            seen: set[str] = set()
            dup = next(d for d in doc_ids if d in seen or seen.add(d))
            raise ValueError(f"doc_ids contains {dup!r} more than once; expected distinct ids")
        info = dict(embedding_info or {})
        try:
            json.dumps(info)
        except (TypeError, ValueError) as e:
            raise ValueError(f"embedding_info must be JSON-serialisable (it is saved in {INFO_FILE}): {e}") from None

        resolved_mode = mode
        if mode == "auto":
            resolved_mode = "exact" if n < AUTO_EXACT_MAX_DOCS else "scann"
        if resolved_mode == "exact":
            if params:
                why = f"mode='auto' chose exact search for {n} < {AUTO_EXACT_MAX_DOCS} documents" if mode == "auto" else "mode is 'exact'"
                raise ValueError(f"index params apply to mode='scann' only, but {why}; drop them or pass mode='scann'")
            resolved = {}
        else:
            resolved = _resolve_params(n, dim, params)
        searcher = _build_searcher(emb, resolved_mode, resolved)
        return cls(searcher, doc_ids, dim, resolved_mode, resolved, info)

    # --- searching ----------------------------------------------------------------

    def search(
        self,
        queries: Any,
        k: int,
        batch_size: int = 4096,
        *,
        leaves_to_search: int | None = None,
        reorder: int | None = None,
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Top-`k` documents for each query: (scores [Q, k] float32, doc ids [Q][k]), best first.

        `k` above the index size is clipped to it. Queries go to ScaNN's
        multi-threaded batched search `batch_size` at a time. In scann mode
        `leaves_to_search` and `reorder` override the build-time values for this
        call. If a scann search finds fewer than k documents in the leaves it
        searched (only with very small leaves_to_search), the missing slots have
        score -inf and the id row is shorter.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        q = _as_matrix(queries, "queries", self.dim)
        k = min(int(k), self.size)
        pre_reorder = None
        leaves = None
        if self.mode == "scann":
            leaves = self.params["num_leaves_to_search"] if leaves_to_search is None else int(leaves_to_search)
            if not 1 <= leaves <= self.params["num_leaves"]:
                raise ValueError(f"leaves_to_search must be in [1, {self.params['num_leaves']}], got {leaves}")
            pre_reorder = self.params["reorder"] if reorder is None else int(reorder)
            if pre_reorder < 1:
                raise ValueError(f"reorder must be a positive integer, got {pre_reorder}")
            pre_reorder = min(max(pre_reorder, k), self.size)  # ScaNN needs at least k candidates
        elif leaves_to_search is not None or reorder is not None:
            raise ValueError("leaves_to_search and reorder apply to mode='scann' indexes only; this one is exact")

        scores = np.empty((q.shape[0], k), np.float32)
        rows = np.empty((q.shape[0], k), np.int64)
        for start in range(0, q.shape[0], batch_size):
            idx, dist = self._searcher.search_batched_parallel(
                q[start : start + batch_size],
                final_num_neighbors=k,
                pre_reorder_num_neighbors=pre_reorder,
                leaves_to_search=leaves,
                batch_size=min(256, batch_size),
            )
            rows[start : start + len(idx)] = idx
            scores[start : start + len(idx)] = dist
        missing = np.isnan(scores)  # ScaNN pads short result lists with (0, NaN)
        ids = self._doc_ids[rows]
        if missing.any():
            scores[missing] = -np.inf
            return scores, [list(r[~m]) for r, m in zip(ids, missing)]
        return scores, ids.tolist()

    # --- saving and loading -------------------------------------------------------

    def save(self, folder: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
        """Write the index to `folder` (a temporary sibling renamed into place)."""
        folder = pathlib.Path(folder)
        if folder.exists() and not overwrite:
            raise FileExistsError(f"{folder} already exists; pass overwrite=True to replace the index there")
        with staged_folder(folder) as tmp:
            # relative_path: asset paths inside the folder, so it still loads after the rename.
            self._searcher.serialize(str(tmp), relative_path=True)
            _write_json(tmp / DOC_IDS_FILE, self._doc_ids.tolist())
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
            info = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "dim": self.dim,
                "size": self.size,
                "mode": self.mode,
                "params": self.params,
                "embedding_info": self.embedding_info,
                "scann_version": _scann_version(),
                "files": files,
            }
            _write_json(tmp / INFO_FILE, info)  # written last: its presence marks a finished write
            for path in tmp.iterdir():  # ScaNN's files too, so the renamed folder survives a crash
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        return folder

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        expected_dim: int | None = None,
        expected_info: Mapping[str, Any] | None = None,
    ) -> Index:
        """Read an index saved by `save`, checking it is complete and built for what the caller expects.

        `expected_dim` is the query model's embedding size; every key of
        `expected_info` (e.g. the model fingerprint, the pooling) must equal the
        one in the index's embedding_info.
        """
        folder = pathlib.Path(folder)
        info = read_info(folder)
        if expected_dim is not None and int(expected_dim) != info["dim"]:
            raise IndexFolderError(
                f"index at {folder} was built for {info['dim']}-dim embeddings, the query model gives {int(expected_dim)}"
            )
        stored = info["embedding_info"]
        for key, want in (expected_info or {}).items():
            if key not in stored:
                raise IndexFolderError(
                    f"index at {folder} has no embedding_info {key!r} (it records {sorted(stored)}); expected {want!r}"
                )
            if stored[key] != want:
                raise IndexFolderError(
                    f"index at {folder} was built with {key}={stored[key]!r}, expected {key}={want!r}"
                )
        try:
            doc_ids = json.loads((folder / DOC_IDS_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IndexFolderError(f"{folder / DOC_IDS_FILE} is not valid JSON ({e}); expected a list of doc ids") from None
        if (
            not isinstance(doc_ids, list)
            or len(doc_ids) != info["size"]
            or not all(isinstance(d, str) for d in doc_ids)
        ):
            raise IndexFolderError(f"{folder / DOC_IDS_FILE} should be a JSON list of {info['size']} string doc ids")

        import scann

        searcher = scann.scann_ops_pybind.load_searcher(str(folder), assets_backcompat_shim=False)
        if searcher.size() != info["size"]:
            raise IndexFolderError(
                f"index at {folder} holds {searcher.size()} ScaNN datapoints, {INFO_FILE} says {info['size']}"
            )
        return cls(searcher, doc_ids, info["dim"], info["mode"], info["params"], stored)


def read_info(folder: str | os.PathLike) -> dict[str, Any]:
    """The index_info.json of an index folder, after checking every file it lists is there whole."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise IndexFolderError(f"no index at {folder}: the folder does not exist")
    path = folder / INFO_FILE
    if not path.is_file():
        raise IndexFolderError(f"index at {folder} is incomplete: {INFO_FILE} is missing")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexFolderError(f"{path} is not valid JSON ({e}); expected an index description") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise IndexFolderError(f"{path} does not describe an o1_jax index (expected format {FORMAT!r})")
    if info.get("format_version") != FORMAT_VERSION:
        raise IndexFolderError(
            f"{path} has format_version {info.get('format_version')!r}; this code reads version "
            f"{FORMAT_VERSION}, so rebuild the index"
        )
    for key, kind in (("dim", int), ("size", int), ("mode", str), ("params", dict), ("embedding_info", dict), ("files", dict)):
        if not isinstance(info.get(key), kind):
            raise IndexFolderError(f"{path} key {key!r} should be a {kind.__name__}, got {info.get(key)!r}")
    if info["mode"] not in ("exact", "scann"):
        raise IndexFolderError(f"{path} key 'mode' should be 'exact' or 'scann', got {info['mode']!r}")
    for name, size in info["files"].items():
        file = folder / name
        if not file.is_file():
            raise IndexFolderError(f"index at {folder} is incomplete: {name} is missing")
        if file.stat().st_size != size:
            raise IndexFolderError(
                f"index at {folder} is damaged: {name} is {file.stat().st_size} bytes, {INFO_FILE} says {size}"
            )
    return info


def _write_json(path: pathlib.Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=None if isinstance(obj, list) else 2)  # the id list compact


def _scann_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("scann")
    except metadata.PackageNotFoundError:
        return None


# --- ground truth ---------------------------------------------------------------------


def exact_search(
    queries: Any, embeddings: Any, k: int, *, query_block: int = 1024, doc_block: int = 16384
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`k` inner-product search in numpy: (scores [Q, k] float32, rows [Q, k] int64), best first.

    Blocked so the score temporaries stay at query_block x doc_block floats
    (64 MiB by default): each document block's top k (argpartition) is merged
    into the running top k. Ties are broken by the lower row.
    """
    emb = _as_matrix(embeddings, "embeddings")
    q = _as_matrix(queries, "queries", emb.shape[1])
    if emb.shape[0] == 0:
        raise ValueError("cannot search an empty corpus (embeddings has 0 rows)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    n = emb.shape[0]
    k = min(int(k), n)
    out_scores = np.empty((q.shape[0], k), np.float32)
    out_rows = np.empty((q.shape[0], k), np.int64)
    for qs in range(0, q.shape[0], query_block):
        qb = q[qs : qs + query_block]
        best_s = np.full((len(qb), 0), -np.inf, np.float32)
        best_r = np.zeros((len(qb), 0), np.int64)
        for ds in range(0, n, doc_block):
            s = qb @ emb[ds : ds + doc_block].T  # [q, d]
            if s.shape[1] > k:
                part = np.argpartition(-s, k - 1, axis=1)[:, :k]
                s = np.take_along_axis(s, part, axis=1)
                r = part + ds
            else:
                r = np.broadcast_to(np.arange(ds, ds + s.shape[1]), s.shape)
            cand_s = np.concatenate([best_s, s], axis=1)
            cand_r = np.concatenate([best_r, r], axis=1)
            if cand_s.shape[1] > k:
                part = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
                cand_s = np.take_along_axis(cand_s, part, axis=1)
                cand_r = np.take_along_axis(cand_r, part, axis=1)
            best_s, best_r = cand_s, cand_r
        order = np.lexsort((best_r, -best_s), axis=1)  # score descending, then row ascending
        out_scores[qs : qs + len(qb)] = np.take_along_axis(best_s, order, axis=1)
        out_rows[qs : qs + len(qb)] = np.take_along_axis(best_r, order, axis=1)
    return out_scores, out_rows


def recall_at_k(approx_ids: Iterable[Sequence], exact_ids: Iterable[Sequence], k: int) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / |exact top-k| (ids or rows alike)."""
    approx_ids, exact_ids = list(approx_ids), list(exact_ids)
    if len(approx_ids) != len(exact_ids):
        raise ValueError(f"recall_at_k got {len(approx_ids)} approximate and {len(exact_ids)} exact result rows")
    if not exact_ids:
        raise ValueError("recall_at_k got no queries")
    total = 0.0
    for approx, exact in zip(approx_ids, exact_ids):
        truth = set(list(exact)[:k])
        if not truth:
            raise ValueError("recall_at_k got an empty exact result row")
        total += len(truth & set(list(approx)[:k])) / len(truth)
    return total / len(exact_ids)
