"""O1 token layouts, left padding, generation targets, truncation and group sampling, with a real tokenizer."""

import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from o1_jax import losses
from o1_jax.data import formatting
from o1_jax.data.formatting import Formatter, add_special_tokens, build_example

WORDS = [f"w{i}" for i in range(60)] + ["title", "text", "query", "thought", "<", ">", "/"]


def _tokenizer(with_pad=True):
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = {"pad_token": "<pad>"} if with_pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", **kw)


@pytest.fixture()
def tok():
    t = _tokenizer()
    add_special_tokens(t)
    return t


def _w(*idx):
    return " ".join(f"w{i}" for i in idx)


def _id(tok, i):
    return tok.convert_tokens_to_ids(f"w{i}")


def test_add_special_tokens_is_idempotent():
    t = _tokenizer()
    n = len(t)
    ids = add_special_tokens(t)
    assert list(ids) == list(formatting.SPECIAL_TOKENS)
    assert sorted(ids.values()) == list(range(n, n + 4))
    assert add_special_tokens(t) == ids and len(t) == n + 4
    assert t("w1 <emb>", add_special_tokens=False)["input_ids"] == [_id(t, 1), ids["<emb>"]]


def test_formatter_requires_special_tokens_and_valid_limits():
    with pytest.raises(ValueError, match="add_special_tokens"):
        Formatter(_tokenizer(), 4, 4, 4)
    t = _tokenizer()
    add_special_tokens(t)
    with pytest.raises(ValueError, match="max_doc_tokens"):
        Formatter(t, 4, 4, 0)


def test_query_layout_and_generation_positions(tok):
    f = Formatter(tok, 8, 8, 8)
    s = f.special
    ids, gen = f.query_ids(_w(1, 2, 3), _w(4, 5))
    assert ids == [s["<query>"], _id(tok, 1), _id(tok, 2), _id(tok, 3), s["</query>"], s["<thought>"],
                   _id(tok, 4), _id(tok, 5), tok.eos_token_id, s["<emb>"]]
    assert gen == [5, 6, 7]  # <thought>, w4, w5 predict w4, w5, </s>
    assert [ids[p + 1] for p in gen] == [_id(tok, 4), _id(tok, 5), tok.eos_token_id]
    # Empty (or blank) thought: no <eos>, nothing to generate.
    for empty in ("", "   "):
        ids, gen = f.query_ids(_w(1, 2), empty)
        assert ids == [s["<query>"], _id(tok, 1), _id(tok, 2), s["</query>"], s["<thought>"], s["<emb>"]]
        assert gen == []
    assert f.prompt_ids(_w(7)) == [s["<query>"], _id(tok, 7), s["</query>"], s["<thought>"]]


def test_doc_layout_and_text_never_makes_control_tokens(tok):
    f = Formatter(tok, 8, 8, 8)
    emb = f.special["<emb>"]
    assert f.doc_ids({"title": "w1", "text": _w(2, 3)}) == [_id(tok, 1), _id(tok, 2), _id(tok, 3), emb]
    assert f.doc_ids({"title": "", "text": _w(2)}) == [_id(tok, 2), emb]
    assert f.doc_ids({"text": _w(2)}) == f.doc_ids(_w(2))
    assert formatting.doc_text({"title": " w1 ", "text": None}) == "w1"
    # A passage that spells a special token is text, not a control token.
    ids = f.doc_ids("w1 <emb> w2")
    assert ids.count(emb) == 1 and ids[-1] == emb
    ids, _ = f.query_ids("w1 </query>", "w2 <thought>")
    assert ids.count(f.special["</query>"]) == 1 and ids.count(f.special["<thought>"]) == 1


def test_truncation(tok):
    f = Formatter(tok, 3, 4, 5)
    ids, gen = f.query_ids(_w(*range(10)), _w(*range(20, 30)))
    assert len(ids) == f.Tq == 3 + 4 + 5 and len(gen) == f.Kg == 5
    assert ids[1:4] == [_id(tok, i) for i in range(3)]  # the start of the query is kept
    assert ids[6:10] == [_id(tok, i) for i in range(20, 24)]  # and of the thought
    assert ids[-2:] == [tok.eos_token_id, f.special["<emb>"]]  # the closing tokens always survive
    d = f.doc_ids(_w(*range(10)))
    assert len(d) == f.Td == 6 and d[:5] == [_id(tok, i) for i in range(5)]


def _examples():
    return [
        {"id": "a", "query": _w(1, 2), "thought": _w(3, 4, 5), "docs": [_w(10), _w(11, 12)],
         "teacher_scores": [2.0, 1.0]},
        {"id": "b", "query": _w(6), "thought": "", "docs": [{"title": "w13", "text": _w(14)}, _w(15)],
         "teacher_scores": None},
        {"id": "c", "query": _w(*range(30)), "thought": _w(*range(30, 60)), "docs": [_w(*range(20)), _w(16)],
         "teacher_scores": None},
    ]


def test_collate_train_shapes_padding_and_targets(tok):
    f = Formatter(tok, 6, 5, 7)
    batch = f.collate_train(_examples())
    b, g = 3, 2
    expect = {
        "query_ids": ((b, f.Tq), np.int32), "query_mask": ((b, f.Tq), np.int32),
        "gen_positions": ((b, f.Kg), np.int32), "gen_targets": ((b, f.Kg), np.int32),
        "gen_weights": ((b, f.Kg), np.float32), "doc_ids": ((b * g, f.Td), np.int32),
        "doc_mask": ((b * g, f.Td), np.int32), "teacher_scores": ((b, g), np.float32),
        "teacher_mask": ((b,), np.float32), "doc_hash": ((b * g,), np.int32),
        "positive_hash": ((b, formatting.MAX_POSITIVE_KEYS), np.int32),
    }
    assert set(batch) == set(expect)
    for k, (shape, dtype) in expect.items():
        assert batch[k].shape == shape and batch[k].dtype == dtype, k
    emb, pad = f.special["<emb>"], tok.pad_token_id
    qi, qm, di, dm = batch["query_ids"], batch["query_mask"], batch["doc_ids"], batch["doc_mask"]
    # Left padding: <emb> is the last position of every row, padding only at the start.
    assert np.all(qi[:, -1] == emb) and np.all(di[:, -1] == emb)
    for ids, mask in [(qi, qm), (di, dm)]:
        for row, m in zip(ids, mask):
            n = int(m.sum())
            assert np.all(m[-n:] == 1) and np.all(m[:-n] == 0) and np.all(row[:-n] == pad)
    # Rows are the unpadded sequences, right-aligned.
    for i, ex in enumerate(_examples()):
        ids, _ = f.query_ids(ex["query"], ex["thought"])
        assert qi[i, -len(ids):].tolist() == ids and qm[i].sum() == len(ids)
    assert di[2, -3:].tolist() == [_id(tok, 13), _id(tok, 14), emb]
    assert dm[4].sum() == f.Td  # a long document fills the row exactly
    # Generation targets: exactly the thought tokens then </s>.
    w = batch["gen_weights"]
    assert w.sum(1).tolist() == [4, 0, 6]
    for i in range(b):
        k = int(w[i].sum())
        pos, tgt = batch["gen_positions"][i, :k], batch["gen_targets"][i, :k]
        assert np.all(qi[i, pos + 1] == tgt)
        if k:
            assert qi[i, pos[0]] == f.special["<thought>"]
        assert np.all(batch["gen_positions"][i, k:] == 0) and np.all(batch["gen_targets"][i, k:] == 0)
    assert batch["gen_targets"][0, :4].tolist() == [_id(tok, 3), _id(tok, 4), _id(tok, 5), tok.eos_token_id]
    assert batch["gen_targets"][2, :6].tolist() == [_id(tok, i) for i in range(30, 35)] + [tok.eos_token_id]
    # Teacher scores only where the example has them.
    assert batch["teacher_mask"].tolist() == [1, 0, 0]
    assert batch["teacher_scores"].tolist() == [[2, 1], [0, 0], [0, 0]]


def test_collate_train_rejects_ragged_groups(tok):
    f = Formatter(tok, 4, 4, 4)
    ex = _examples()
    ex[1]["docs"] = ex[1]["docs"][:1]
    with pytest.raises(ValueError, match="example b has 1 docs, expected 2"):
        f.collate_train(ex)


def test_pad_falls_back_to_eos():
    t = _tokenizer(with_pad=False)
    add_special_tokens(t)
    f = Formatter(t, 4, 4, 4)
    assert f.pad_id == t.eos_token_id
    assert f.collate_train(_examples()[:2])["query_ids"][1, 0] == t.eos_token_id


def test_inference_collation_buckets(tok):
    f = Formatter(tok, 40, 40, 40, bucket=16)
    out = f.collate_queries([_w(1), _w(*range(20))], thoughts=[_w(2), ""], num_rows=4)
    ids, mask = out["query_ids"], out["query_mask"]
    assert ids.shape == (4, 32) and ids.dtype == np.int32  # 24 tokens rounded up to 32
    assert mask[2:].sum() == 0 and np.all(ids[:2, -1] == f.special["<emb>"])
    assert ids[0, -6:].tolist() == f.query_ids(_w(1), _w(2)).ids[-6:]
    no_thought = f.collate_queries([_w(1)])["query_ids"]
    assert no_thought.shape == (1, 16) and no_thought[0, -5:].tolist() == f.query_ids(_w(1), "").ids
    docs = f.collate_docs([_w(*range(45)), {"title": "w1", "text": "w2"}])
    assert docs["doc_ids"].shape == (2, f.Td)  # capped at Td = 41, not rounded to 48
    assert docs["doc_mask"][1].sum() == 3
    prompts = f.collate_prompts([_w(1, 2), _w(3)])
    assert prompts["prompt_ids"].shape == (2, 16) and np.all(prompts["prompt_ids"][:, -1] == f.special["<thought>"])
    with pytest.raises(ValueError, match="2 queries but 1 thoughts"):
        f.collate_queries([_w(1), _w(2)], thoughts=[""])


# ---- build_example ----

def _record(num_neg, scores=False):
    r = {"id": "rec-7", "query": "w1", "thought": "w2 w3",
         "pos": [{"title": "", "text": f"w{40 + i}"} for i in range(2)],
         "neg": [{"title": "", "text": f"w{i}"} for i in range(num_neg)]}
    if scores:  # a score that names its document, to check the alignment
        r["pos_scores"] = [40.0 + i for i in range(2)]
        r["neg_scores"] = [float(i) for i in range(num_neg)]
    return r


def test_group_sampling_without_replacement():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ex = build_example(_record(10), rng, group_size=6, thought_dropout=0.0)
        assert len(ex["docs"]) == 6 and ex["docs"][0] in ("w40", "w41")
        negs = ex["docs"][1:]
        assert len(set(negs)) == 5 and all(int(d[1:]) < 10 for d in negs)
        assert ex["thought"] == "w2 w3" and ex["teacher_scores"] is None and ex["id"] == "rec-7"


def test_group_sampling_with_replacement_uses_every_negative():
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(20):
        ex = build_example(_record(3), rng, group_size=8, thought_dropout=0.0)
        negs = ex["docs"][1:]
        assert len(negs) == 7 and set(negs) == {"w0", "w1", "w2"}
        seen.add(tuple(negs))
    assert len(seen) > 1


def test_group_without_negatives():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="record rec-7 has no negatives"):
        build_example(_record(0), rng, group_size=4, thought_dropout=0.0)
    ex = build_example(_record(0, scores=True), rng, group_size=1, thought_dropout=0.0)
    assert len(ex["docs"]) == 1 and ex["teacher_scores"] == [float(ex["docs"][0][1:])]
    with pytest.raises(ValueError, match="'pos' must be a non-empty list"):
        build_example({**_record(3), "pos": []}, rng, group_size=2, thought_dropout=0.0)


def test_teacher_scores_follow_the_chosen_documents():
    rng = np.random.default_rng(3)
    for num_neg in (10, 2):
        ex = build_example(_record(num_neg, scores=True), rng, group_size=5, thought_dropout=0.0)
        assert ex["teacher_scores"] == [float(d[1:]) for d in ex["docs"]]
    bad = {**_record(4, scores=True), "neg_scores": [1.0]}
    with pytest.raises(ValueError, match="record rec-7: pos_scores/neg_scores"):
        build_example(bad, rng, group_size=3, thought_dropout=0.0)


def test_thought_dropout():
    rng = np.random.default_rng(4)
    assert build_example(_record(5), rng, 3, 1.0)["thought"] == ""
    dropped = [build_example(_record(5), rng, 3, 0.3)["thought"] == "" for _ in range(2000)]
    assert 0.25 < np.mean(dropped) < 0.35
    no_thought = {**_record(5)}
    del no_thought["thought"]
    assert build_example(no_thought, rng, 3, 0.0)["thought"] == ""


def test_build_example_is_deterministic():
    recs = [_record(n, scores=True) for n in (2, 5, 12)]
    draw = lambda seed: [build_example(r, np.random.default_rng(seed + i), 4, 0.5)
                         for i, r in enumerate(recs * 5)]
    assert draw(0) == draw(0)
    assert draw(0) != draw(100)


def test_collate_train_carries_ids_or_texts_of_documents_and_positives(tok):
    """(tests/test_false_negatives.py has the loss.) Query 0's positive (corpus id d7) is query 1's
    hard negative under another title: masked out of query 0's softmax only."""
    rng = np.random.default_rng(0)
    shared = {"title": "t", "text": "a document two records share", "id": "d7"}
    recs = [{"id": "q0", "query": "first", "pos": [shared], "neg": [{"title": "", "text": "n0"}]},
            {"id": "q1", "query": "second", "pos": [{"title": "", "text": "p1"}],
             "neg": [dict(shared, title="a different title, the same id")]}]
    examples = [formatting.build_example(r, rng, 2, 0.0) for r in recs]
    assert examples[1]["doc_keys"] == ["text:p1", "id:d7"]
    two = formatting.build_example({"query": "q", "pos": [shared, "another positive"], "neg": ["n"]}, rng, 2, 0.0)
    assert sorted(two["positive_keys"]) == ["id:d7", "text:another positive"]
    assert two["positive_keys"][0] == two["doc_keys"][0]  # the chosen positive first
    batch = formatting.Formatter(tok, 8, 8, 16).collate_train(examples)
    assert batch["doc_hash"].shape == (4,) and batch["positive_hash"].shape == (2, formatting.MAX_POSITIVE_KEYS)
    assert batch["doc_hash"][0] == batch["doc_hash"][3] == formatting.key_hash("id:d7")
    exclude = losses.false_negatives(jnp.asarray(batch["positive_hash"]), jnp.asarray(batch["doc_hash"]), 2)
    assert np.asarray(exclude).tolist() == [[False, False, False, True], [False] * 4]


def test_train_batch_shapes_match_collate_train(tok):
    """The planner's shapes (no tokenizer) are exactly what the formatter produces."""
    batch = Formatter(tok, 6, 5, 7).collate_train(_examples())
    shapes = formatting.train_batch_shapes(3, 2, 6, 5, 7)
    assert set(shapes) == set(batch)
    for key, (shape, dtype) in shapes.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
