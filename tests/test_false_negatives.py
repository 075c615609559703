"""In-batch false negatives: a query's known positive met elsewhere in the global batch (another
query's positive or hard negative; same corpus id, or same text without ids) is left out of that
query's softmax, not out of the batch; with no duplicates the loss is unchanged."""

import jax.numpy as jnp
import numpy as np
import pytest

from o1_jax import losses
from o1_jax.data import formatting, records
from tests.tolerances import contrastive_loss_atol

B, G, D, T = 3, 3, 16, 0.05


def _unit(rng, n):
    x = rng.normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _masked_reference(q, d, exclude):
    """The masked InfoNCE written out in float64: query i's softmax over the documents it keeps."""
    scores = q.astype(np.float64) @ d.astype(np.float64).T / T
    loss = 0.0
    for i in range(B):
        keep = ~exclude[i]
        loss += np.log(np.exp(scores[i, keep]).sum()) - scores[i, i * G]
    return loss / B


def test_a_positive_met_as_another_querys_negative_is_masked_for_its_own_query_only():
    rng = np.random.default_rng(0)
    q, d = _unit(rng, B), _unit(rng, B * G)
    doc_hash = np.arange(1, B * G + 1, dtype=np.int32)  # every document distinct ...
    doc_hash[1 * G + 2] = doc_hash[0]  # ... but query 1's second negative is query 0's positive
    d[1 * G + 2] = d[0]  # the same document: the same embedding
    q[0] = d[0]  # query 0 has learnt its positive: only the duplicate competes with it
    positive_hash = np.zeros((B, formatting.MAX_POSITIVE_KEYS), np.int32)
    positive_hash[:, 0] = doc_hash[np.arange(B) * G]
    exclude = np.asarray(losses.false_negatives(jnp.asarray(positive_hash), jnp.asarray(doc_hash), G))
    expected = np.zeros((B, B * G), bool)
    expected[0, 1 * G + 2] = True  # out of query 0's softmax; query 1 still has it as a negative
    np.testing.assert_array_equal(exclude, expected)
    loss, _ = losses.contrastive_loss(q, d, T, G, jnp.asarray(exclude))
    atol = contrastive_loss_atol(B, B * G, D, T, float(loss), reorder=False)
    assert float(loss) == pytest.approx(_masked_reference(q, d, expected), abs=atol)
    unmasked, _ = losses.contrastive_loss(q, d, T, G)
    assert float(unmasked) - float(loss) == pytest.approx(np.log(2) / B, abs=1e-3)  # a tie with itself, unmasked


def test_without_duplicates_the_loss_is_bit_identical():
    rng = np.random.default_rng(1)
    q, d = _unit(rng, B), _unit(rng, B * G)
    doc_hash = np.arange(1, B * G + 1, dtype=np.int32)
    positive_hash = np.zeros((B, formatting.MAX_POSITIVE_KEYS), np.int32)
    positive_hash[:, 0] = doc_hash[np.arange(B) * G]
    positive_hash[2, 1] = 999  # a known positive that is not in the batch
    exclude = losses.false_negatives(jnp.asarray(positive_hash), jnp.asarray(doc_hash), G)
    assert not bool(jnp.any(exclude))
    assert float(losses.contrastive_loss(q, d, T, G, exclude)[0]) == float(losses.contrastive_loss(q, d, T, G)[0])


def test_records_keep_document_ids():
    assert records.normalize_doc({"title": "t", "text": "x", "_id": 12}) == {"title": "t", "text": "x", "id": "12"}
    assert records.normalize_doc({"text": "x"}) == {"title": "", "text": "x"}
    assert records.doc_key({"text": "x", "id": "a"}) == "id:a" and records.doc_key(" x ") == "text:x"
