"""The ScaNN index against numpy exact search; save/load; the clear errors."""

import json
import os

import numpy as np
import pytest

from o1_jax.retrieval import vector_index as index_lib
from o1_jax.retrieval.vector_index import Index, IndexFolderError, exact_search, recall_at_k
from tests.tolerances import reorder_atol


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng, n, d, clusters, sigma=1.0):
    """Unit vectors around `clusters` random unit centres (noise norm ~sigma), as in benchmarks/index.py."""
    centers = unit_rows(rng, clusters, d)
    x = centers[rng.integers(0, clusters, n)] + rng.standard_normal((n, d)).astype(np.float32) * (sigma / np.sqrt(d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ids_of(n):
    return [f"doc{i}" for i in range(n)]


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    docs = unit_rows(rng, 3000, 32)
    queries = unit_rows(rng, 40, 32)
    return docs, queries, Index.build(docs, ids_of(3000), embedding_info={"model": "m1", "pooling": "last"})


@pytest.fixture(scope="module")
def clustered_20k():
    rng = np.random.default_rng(1)
    docs = clustered(rng, 20_000, 64, clusters=20)
    # Queries near the data: a document plus noise half the clusters' spread.
    q = docs[rng.integers(0, len(docs), 200)] + rng.standard_normal((200, 64)).astype(np.float32) * (0.5 / 8)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return docs, q, Index.build(docs, ids_of(len(docs)), mode="scann", embedding_info={"model": "m1"})


def test_exact_search_matches_full_sort():
    rng = np.random.default_rng(2)
    docs, queries = unit_rows(rng, 1000, 16), unit_rows(rng, 30, 16)
    full = queries @ docs.T
    want_rows = np.argsort(-full, axis=1, kind="stable")[:, :7]
    # Small blocks, so the running top-k merge across query and document blocks is exercised.
    scores, rows = exact_search(queries, docs, 7, query_block=8, doc_block=100)
    np.testing.assert_array_equal(rows, want_rows)
    # Two float32 orders of a 16-term dot product of unit vectors (sum|q_k d_k| <= 1).
    np.testing.assert_allclose(scores, np.take_along_axis(full, want_rows, axis=1), rtol=0, atol=reorder_atol(16, 1.0))
    scores, rows = exact_search(queries, docs[:5], 50)  # k > N is clipped
    assert rows.shape == (30, 5) and sorted(rows[0]) == list(range(5))


def test_exact_mode_equals_numpy_exact_search(small):
    docs, queries, index = small
    assert index.mode == "exact"  # auto, below AUTO_EXACT_MAX_DOCS
    assert (index.dim, index.size) == (32, 3000)
    want_scores, want_rows = exact_search(queries, docs, 10)
    scores, ids = index.search(queries, 10, batch_size=16)
    assert scores.dtype == np.float32 and scores.shape == (40, 10)
    assert ids == [[f"doc{r}" for r in row] for row in want_rows]
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=reorder_atol(32, 1.0))


def test_scann_mode_recall_on_clustered_vectors(clustered_20k):
    docs, queries, index = clustered_20k
    assert index.mode == "scann"
    assert index.params["num_leaves"] == round(np.sqrt(len(docs)))
    _, rows = exact_search(queries, docs, 10)
    scores, ids = index.search(queries, 10)
    recall = recall_at_k(ids, [[f"doc{r}" for r in row] for row in rows], 10)
    assert recall >= 0.9, recall
    # Reordered scores are exact inner products of the returned documents, best first.
    rows_found = np.array([[int(d[3:]) for d in row] for row in ids])
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, docs[rows_found]), rtol=0,
                               atol=reorder_atol(64, 1.0))
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    # Searching every leaf with a deep reorder is close to exact.
    _, ids_all = index.search(queries, 10, leaves_to_search=index.params["num_leaves"], reorder=1000)
    assert recall_at_k(ids_all, [[f"doc{r}" for r in row] for row in rows], 10) >= 0.99


@pytest.mark.parametrize("which", ["small", "clustered_20k"])
def test_save_load_round_trip(which, request, tmp_path):
    docs, queries, index = request.getfixturevalue(which)
    folder = index.save(tmp_path / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary left behind
    loaded = Index.load(folder, expected_dim=docs.shape[1], expected_info={"model": "m1"})
    assert (loaded.mode, loaded.size, loaded.dim, loaded.params) == (index.mode, index.size, index.dim, index.params)
    assert loaded.embedding_info == index.embedding_info
    s1, i1 = index.search(queries, 10)
    s2, i2 = loaded.search(queries, 10)
    assert i1 == i2
    np.testing.assert_array_equal(s1, s2)
    info = json.loads((folder / "index_info.json").read_text())
    assert info["format_version"] == index_lib.FORMAT_VERSION and "dataset.npy" in info["files"]


def test_load_refuses_incomplete_or_damaged_folder(small, tmp_path):
    _, _, index = small
    with pytest.raises(IndexFolderError, match="no index at .*does not exist"):
        Index.load(tmp_path / "nothing")
    for name in ["index_info.json", "doc_ids.json", "dataset.npy", "scann_assets.pbtxt"]:
        folder = index.save(tmp_path / name)
        os.remove(folder / name)
        with pytest.raises(IndexFolderError, match=f"index at .* is incomplete: {name} is missing"):
            Index.load(folder)
    folder = index.save(tmp_path / "truncated")
    with open(folder / "dataset.npy", "r+b") as f:
        f.truncate(100)
    with pytest.raises(IndexFolderError, match="dataset.npy is 100 bytes, index_info.json says"):
        Index.load(folder)
    folder = index.save(tmp_path / "badjson")
    (folder / "index_info.json").write_text("{")
    with pytest.raises(IndexFolderError, match="index_info.json is not valid JSON"):
        Index.load(folder)


def test_load_checks_dim_and_embedding_info(small, tmp_path):
    _, _, index = small
    folder = index.save(tmp_path / "idx")
    with pytest.raises(IndexFolderError, match=r"index at .*idx was built for 32-dim embeddings, the query model gives 768"):
        Index.load(folder, expected_dim=768)
    with pytest.raises(IndexFolderError, match=r"built with model='m1', expected model='m2'"):
        Index.load(folder, expected_info={"model": "m2", "pooling": "last"})
    with pytest.raises(IndexFolderError, match=r"has no embedding_info 'fingerprint'"):
        Index.load(folder, expected_info={"fingerprint": "abc"})
    Index.load(folder, expected_dim=32, expected_info={"model": "m1", "pooling": "last"})


def test_k_larger_than_corpus_is_clipped():
    rng = np.random.default_rng(3)
    docs = unit_rows(rng, 5, 8)
    index = Index.build(docs, ids_of(5))
    scores, ids = index.search(docs, 10)
    assert scores.shape == (5, 5) and all(sorted(row) == sorted(ids_of(5)) for row in ids)
    assert [row[0] for row in ids] == ids_of(5)  # each document is its own nearest neighbour
    scores, ids = index.search(np.zeros((0, 8), np.float32), 3)
    assert scores.shape == (0, 3) and ids == []


def test_failed_save_leaves_nothing(small, tmp_path, monkeypatch):
    _, _, index = small
    real = index_lib._write_json

    def fail_on_info(path, obj):
        if path.name == index_lib.INFO_FILE:
            raise OSError("disk full")
        real(path, obj)

    monkeypatch.setattr(index_lib, "_write_json", fail_on_info)
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path / "idx")
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(index_lib, "_write_json", real)
    folder = index.save(tmp_path / "idx")
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        index.save(folder)
    monkeypatch.setattr(index_lib, "_write_json", fail_on_info)
    with pytest.raises(OSError, match="disk full"):
        index.save(folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # the old index is untouched
    Index.load(folder)
    monkeypatch.setattr(index_lib, "_write_json", real)
    index.save(folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_bad_input_errors(small):
    docs, queries, index = small
    with pytest.raises(ValueError, match="empty corpus"):
        Index.build(np.zeros((0, 8), np.float32), [])
    with pytest.raises(ValueError, match=r"embeddings must be a 2-D \[rows, dim\] array, got shape \(8,\)"):
        Index.build(docs[0, :8], ["a"])
    with pytest.raises(ValueError, match="embeddings must hold floating-point numbers"):
        Index.build(np.ones((2, 2), np.int32), ["a", "b"])
    nan = docs[:10].copy()
    nan[4, 3] = np.nan
    with pytest.raises(ValueError, match="embeddings row 4 contains NaN or infinity"):
        Index.build(nan, ids_of(10))
    with pytest.raises(ValueError, match="embeddings row 0 has L2 norm 2; the index expects L2-normalised"):
        Index.build(docs[:10] * 2, ids_of(10))
    with pytest.raises(ValueError, match="got 9 doc_ids for 10 embedding rows"):
        Index.build(docs[:10], ids_of(9))
    with pytest.raises(ValueError, match="doc_ids contains 'doc1' more than once"):
        Index.build(docs[:3], ["doc0", "doc1", "doc1"])
    with pytest.raises(ValueError, match=r"doc_ids\[1\] is int"):
        Index.build(docs[:3], ["doc0", 1, "doc2"])
    with pytest.raises(ValueError, match="index mode must be one of auto, exact, scann"):
        Index.build(docs[:3], ids_of(3), mode="hnsw")
    with pytest.raises(ValueError, match="params apply to mode='scann' only"):
        Index.build(docs[:100], ids_of(100), params={"num_leaves": 4})
    with pytest.raises(ValueError, match="mode='scann' needs at least 16 documents"):
        Index.build(docs[:10], ids_of(10), mode="scann")
    with pytest.raises(ValueError, match="index param 'num_leaves_to_search' \\(50\\) exceeds 'num_leaves' \\(10\\)"):
        Index.build(docs[:100], ids_of(100), mode="scann", params={"num_leaves": 10, "num_leaves_to_search": 50})
    with pytest.raises(ValueError, match="unknown index param 'leaves'"):
        Index.build(docs[:100], ids_of(100), mode="scann", params={"leaves": 4})
    with pytest.raises(ValueError, match="embedding_info must be JSON-serialisable"):
        Index.build(docs[:3], ids_of(3), embedding_info={"x": object()})
    with pytest.raises(ValueError, match="queries are 16-dim but the index holds 32-dim embeddings"):
        index.search(queries[:, :16], 5)
    with pytest.raises(ValueError, match="queries must be a 2-D"):
        index.search(queries[0], 5)
    bad = queries.copy()
    bad[2, 0] = np.inf
    with pytest.raises(ValueError, match="queries row 2 contains NaN or infinity"):
        index.search(bad, 5)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="apply to mode='scann' indexes only"):
        index.search(queries, 5, leaves_to_search=3)


def test_auto_mode_switches_to_scann_above_threshold(monkeypatch):
    monkeypatch.setattr(index_lib, "AUTO_EXACT_MAX_DOCS", 500)
    rng = np.random.default_rng(4)
    docs = clustered(rng, 2000, 16, clusters=4)
    index = Index.build(docs, ids_of(2000), params={"num_leaves": 10, "num_leaves_to_search": 10, "soar_lambda": 1.5})
    assert index.mode == "scann" and index.params["num_leaves"] == 10 and index.params["reorder"] == 250
    _, rows = exact_search(docs[:50], docs, 5)
    _, ids = index.search(docs[:50], 5)
    assert recall_at_k(ids, [[f"doc{r}" for r in row] for row in rows], 5) >= 0.95


def test_recall_at_k():
    assert recall_at_k([["a", "b", "c"]], [["b", "a", "d"]], 2) == 1.0
    assert recall_at_k([["a", "x"], ["y", "z"]], [["a", "b"], ["b", "c"]], 2) == 0.25
    with pytest.raises(ValueError, match="got 1 approximate and 2 exact result rows"):
        recall_at_k([["a"]], [["a"], ["b"]], 1)


def test_short_result_rows_when_searched_leaves_hold_fewer_than_k():
    rng = np.random.default_rng(5)
    docs = clustered(rng, 2000, 16, clusters=50)
    index = Index.build(docs, ids_of(2000), mode="scann", params={"num_leaves": 100, "num_leaves_to_search": 1})
    scores, ids = index.search(docs[:20], 200)
    assert scores.shape == (20, 200)
    assert any(len(row) < 200 for row in ids)
    for s, row in zip(scores, ids):
        assert len(set(row)) == len(row)
        assert np.all(np.isfinite(s[: len(row)])) and np.all(s[len(row) :] == -np.inf)
