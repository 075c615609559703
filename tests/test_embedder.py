"""O1Embedder: the Python API over a trained workdir and over a plain HF folder."""

import enum
import pathlib

import numpy as np
import pytest
import transformers

from o1_jax import forward
from o1_jax.inference.embedder import O1Embedder
from o1_jax.inference.generate import Sampling
from tests.tiny_models import save_tiny_hf
from tests.tolerances import reorder_atol


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random Llama with the synthetic tokenizer, saved as a plain HF folder (no O1 tokens)."""
    return pathlib.Path(save_tiny_hf(tmp_path_factory.mktemp("hf") / "tiny"))


QUERIES = ["where does the friend of kamo rizel live ?", "what does the cousin of bane tosul do ?",
           "where does the neighbour of kamo tosul live ?"]


def test_a_plain_hf_model_gets_the_special_tokens(hf_folder):
    emb = O1Embedder.from_pretrained(hf_folder, max_thought_tokens=6, batch_size=2)
    assert len(emb.tokenizer) == len(transformers.AutoTokenizer.from_pretrained(hf_folder)) + 4
    assert emb.model.cfg.vocab_size == len(emb.tokenizer)
    rows = emb.params["model"]["embed_tokens"]["embedding"]
    new = np.asarray(rows[emb.special["<emb>"]])
    old = np.asarray(rows[: len(emb.tokenizer) - 4])
    # Two float32 orders of a mean over len(old) rows: within n * eps * mean|x| per column.
    np.testing.assert_allclose(new, old.mean(0), rtol=0, atol=reorder_atol(len(old), np.abs(old).mean(0).max()))


def test_no_think_query_and_corpus_embeddings_match_the_training_formats(hf_folder):
    emb = O1Embedder.from_pretrained(hf_folder, batch_size=2)
    q = emb.encode_queries(QUERIES)
    batch = emb.formatter.collate_queries(QUERIES)
    ref = np.asarray(forward.embed(emb.model, emb.params, batch["query_ids"], batch["query_mask"]))
    np.testing.assert_allclose(q, ref, atol=1e-5)
    docs = [{"title": "bane tosul", "text": "lives in oslo ."}, "kamo rizel", {"title": "", "text": "a b c d e f"}]
    d = emb.encode_corpus(docs)
    batch = emb.formatter.collate_docs(docs)
    ref = np.asarray(forward.embed(emb.model, emb.params, batch["doc_ids"], batch["doc_mask"]))
    np.testing.assert_allclose(d, ref, atol=1e-5)  # sorted into buckets, returned in input order
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-5)


def test_the_attention_kernel_is_chosen_at_load_and_embeds_the_same(hf_folder):
    assert O1Embedder.from_pretrained(hf_folder).model.cfg.attention == "auto"
    emb = {impl: O1Embedder.from_pretrained(hf_folder, batch_size=2, attention=impl) for impl in ("xla", "dot_product")}
    assert emb["dot_product"].model.cfg.attention == "dot_product"
    q = {impl: e.encode_queries(QUERIES) for impl, e in emb.items()}
    # Unit vectors from 2 layers of width 32: a few float32 reorderings per layer (test_attention.py's bound).
    np.testing.assert_allclose(q["dot_product"], q["xla"], rtol=0, atol=reorder_atol(2 * (8 + 16 + 64), 1.0))


def test_thinking_embeddings_average_the_k_thoughts(hf_folder):
    emb = O1Embedder.from_pretrained(hf_folder, max_thought_tokens=5, batch_size=4)
    sampling = Sampling(max_new_tokens=5, temperature=1.0)
    thoughts = emb.think(QUERIES, k=2, sampling=sampling, seed=3)
    assert [len(t) for t in thoughts] == [2, 2, 2]
    mean = emb.encode_queries(QUERIES, num_thoughts=2, sampling=sampling, seed=3, aggregate="mean")
    normed = emb.encode_queries(QUERIES, num_thoughts=2, sampling=sampling, seed=3)
    np.testing.assert_allclose(normed, mean / np.linalg.norm(mean, axis=-1, keepdims=True), atol=1e-5)
    # Each per-thought vector is unit length, so the mean of two is at most 1 and equals 1 only if they agree.
    assert (np.linalg.norm(mean, axis=-1) <= 1 + 1e-5).all()
    with pytest.raises(ValueError, match="aggregate='max'"):
        emb.encode_queries(QUERIES, num_thoughts=1, aggregate="max")


def test_the_encoder_protocol_routes_queries_and_documents(hf_folder):
    """`encode` as MTEB / sentence-transformers evaluators call it (issue 16 §3; mteb itself is not
    installed here): query vs document from input_type or an enum-like prompt_type."""
    class PromptType(enum.Enum):  # the shape of mteb's enum: members whose .value is the string
        query = "query"
        passage = "passage"

    emb = O1Embedder.from_pretrained(hf_folder, batch_size=2)
    docs = [{"title": "bane tosul", "text": "lives in oslo ."}, "kamo rizel"]
    q = emb.encode_queries(QUERIES)
    np.testing.assert_array_equal(emb.encode(QUERIES, input_type="query"), q)
    np.testing.assert_array_equal(emb.encode(QUERIES, prompt_type=PromptType.query, task_name="x", batch_size=8), q)
    d = emb.encode_corpus(docs)
    for kwargs in ({}, {"input_type": "document"}, {"prompt_type": PromptType.passage}, {"prompt_type": "corpus"}):
        np.testing.assert_array_equal(emb.encode(docs, **kwargs), d)
    assert not np.allclose(emb.encode(["kamo rizel"], input_type="query"), emb.encode(["kamo rizel"]))  # formats differ
    with pytest.raises(ValueError, match="expected 'query' or 'document'"):
        emb.encode(QUERIES, input_type="question")


def test_the_query_instruction_is_prepended_to_every_query_and_never_to_documents(hf_folder):
    plain = O1Embedder.from_pretrained(hf_folder, max_thought_tokens=6, batch_size=2)
    instructed = O1Embedder.from_pretrained(hf_folder, max_thought_tokens=6, batch_size=2, query_instruction="jazz ")
    prefixed = ["jazz " + q for q in QUERIES]
    # The same model on the same token rows: identical computations.
    np.testing.assert_array_equal(instructed.encode_queries(QUERIES), plain.encode_queries(prefixed))
    np.testing.assert_array_equal(instructed.encode_queries(QUERIES, num_thoughts=2, seed=1),
                                  plain.encode_queries(prefixed, num_thoughts=2, seed=1))
    assert instructed.think(QUERIES, seed=3) == plain.think(prefixed, seed=3)
    np.testing.assert_array_equal(instructed.encode_corpus(QUERIES), plain.encode_corpus(QUERIES))
    assert not np.array_equal(instructed.encode_queries(QUERIES), plain.encode_queries(QUERIES))
