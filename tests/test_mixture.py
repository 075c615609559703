"""Several training datasets in one run: the sources' parsing, the seeded order, the batches and the loss."""

import json
import pathlib
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from o1_jax import forward, losses
from o1_jax.data import formatting, mixture
from o1_jax.data.synthetic import make_tokenizer, write_demo_data
from o1_jax.defaults import train_config
from o1_jax.training import batches as batches_lib
from o1_jax.training import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_train import tiny_config  # noqa: E402


def data_cfg(train, **changes):
    d = train_config().data
    d.train = train
    for k, v in changes.items():
        d[k] = v
    return d


def sources(*entries, **changes):
    return mixture.parse_sources(data_cfg(list(entries), **changes))


@pytest.fixture(scope="module")
def two_files(tmp_path_factory):
    """The demo task's training records split into two source files (40 and 24 records)."""
    folder = tmp_path_factory.mktemp("mix")
    demo = write_demo_data(folder / "demo", seed=0, num_train=64, num_test=8)
    lines = (demo / "train.jsonl").read_text().splitlines()
    a, b = folder / "a.jsonl", folder / "b.jsonl"
    a.write_text("\n".join(lines[:40]) + "\n")
    b.write_text("\n".join(lines[40:]) + "\n")
    return a, b


# ----------------------------------------------------------------------------- parsing


def test_a_single_file_is_one_source_with_the_run_settings():
    (s,) = mixture.parse_sources(data_cfg("x/train.jsonl", group_size=5, thought_dropout=0.3, query_instruction="q: "))
    assert s == mixture.Source("train", "x/train.jsonl", "proportional", 5, 0.3, True, "q: ")


def test_source_defaults_come_from_the_data_config():
    a, b = sources({"path": "a.jsonl", "weight": 2, "in_batch_negatives": False},
                   {"path": "d/b.jsonl", "group_size": 4, "weight": 1},
                   group_size=3, query_instruction="query: ")
    assert (a.name, a.weight, a.group_size, a.in_batch_negatives, a.instruction) == ("a", 2.0, 3, False, "query: ")
    assert (b.name, b.weight, b.group_size) == ("b", 1.0, 4)


@pytest.mark.parametrize("entries, message", [
    ([{"name": "x"}], r"config\.data\.train\[0\]: missing 'path'"),
    ([{"path": "a.jsonl"}, {"path": "b.jsonl", "weight": -1}], r"config\.data\.train\[1\]\.weight=-1: expected a number > 0"),
    ([{"path": "a.jsonl", "wieght": 2}], r"config\.data\.train\[0\]: unknown key 'wieght'; expected keys among"),
    ([{"path": "a.jsonl"}, {"path": "x/a.jsonl"}], r"config\.data\.train\[1\]: the name 'a' is also source 0's"),
    ([{"path": "a.jsonl", "group_size": 1}], r"\[0\]\.group_size=1: expected an integer >= 2"),
    ([{"path": "a.jsonl", "thought_dropout": 1.5}], r"\[0\]\.thought_dropout=1.5: expected a probability"),
    ([{"path": "a.jsonl", "in_batch_negatives": "no"}], r"\[0\]\.in_batch_negatives='no': expected True or False"),
    (["a.jsonl"], r"config\.data\.train\[0\]='a.jsonl': expected a dict"),
    ([], "an empty list"),
])
def test_a_bad_source_is_one_sentence_naming_the_entry(entries, message):
    with pytest.raises(ValueError, match=message) as e:
        mixture.parse_sources(data_cfg(entries))
    assert "\n" not in str(e.value)


def test_mixed_batches_need_one_group_size():
    with pytest.raises(ValueError, match=r"batches='mixed' with group sizes \[3, 4\]"):
        sources({"path": "a.jsonl"}, {"path": "b.jsonl", "group_size": 4}, group_size=3, batches="mixed")


def test_a_config_file_may_set_a_list_and_the_command_line_a_path():
    c = train_config()
    c.data.train = [{"path": "a.jsonl"}, {"path": "b.jsonl"}]  # as a configs/*.py file does
    assert mixture.is_multi(c.data)
    c.data.train = "c.jsonl"  # as --config.data.train=c.jsonl does
    assert not mixture.is_multi(c.data)
    restored = ml_collections.ConfigDict(json.loads(json.dumps(train_config().to_dict() | {"data": {
        **train_config().data.to_dict(), "train": [{"path": "a.jsonl", "weight": 1.0}]}})))
    assert mixture.parse_sources(restored.data)[0].weight == 1.0  # run_config.json's list reads back


# ----------------------------------------------------------------------------- the order


def order(srcs, sizes, batch=8, **kw):
    return mixture.MixtureOrder(srcs, sizes, batch, seed=kw.pop("seed", 3), **kw)


@pytest.mark.parametrize("batches", ["homogeneous", "mixed"])
@pytest.mark.parametrize("weights, sizes, want", [
    ((1.0, 3.0, 4.0), (100, 100, 100), (0.125, 0.375, 0.5)),
    (("proportional",) * 3, (100, 300, 600), (0.1, 0.3, 0.6)),
])
def test_proportions_over_many_steps_follow_the_weights(batches, weights, sizes, want):
    srcs = sources(*[{"path": f"{n}.jsonl", "weight": w} for n, w in zip("abc", weights)])
    o = order(srcs, sizes, batches=batches)
    steps = 3000
    seen = np.array(list(o.queries_seen(steps).values()), float)
    assert seen.sum() == steps * 8
    # 3000 draws of a step's source (homogeneous): a share's standard error is at most 0.0092;
    # 0.03 is over three of them. Mixed batches draw 8x as many queries.
    np.testing.assert_allclose(seen / seen.sum(), want, atol=0.03)
    direct = np.sum([o.counts(s) for s in range(steps)], axis=0)
    np.testing.assert_array_equal(direct, seen)


def test_weights_for_some_sources_only_are_refused():
    with pytest.raises(ValueError, match=r"config\.data\.train\[1\] has no number 'weight' but source 0 has one"):
        sources({"path": "a.jsonl", "weight": 2.0}, {"path": "b.jsonl"})


def test_homogeneous_steps_read_one_source_each_in_its_own_epochs():
    srcs = sources({"path": "a.jsonl"}, {"path": "b.jsonl"})
    o = order(srcs, [40, 24])
    per_source = {0: [], 1: []}
    for s in range(40):
        rows = o.global_rows(s)
        assert len(rows) == 8 and len({k for k, _ in rows}) == 1  # never two datasets in one step
        per_source[rows[0][0]] += [i for _, i in rows]
    for k, n in ((0, 40), (1, 24)):
        spe = n // 8
        recs = per_source[k]
        for e in range(len(recs) // (spe * 8)):  # every full epoch of a source: distinct records
            epoch = recs[e * spe * 8:(e + 1) * spe * 8]
            assert len(set(epoch)) == len(epoch) and max(epoch) < n


def test_the_order_is_a_pure_function_of_seed_and_step():
    srcs = sources({"path": "a.jsonl", "weight": 1.0}, {"path": "b.jsonl", "weight": 2.0}, batches="mixed")
    forward_order = [order(srcs, [40, 24], batches="mixed").global_rows(s) for s in range(30)]
    fresh = order(srcs, [40, 24], batches="mixed")
    backwards = [fresh.global_rows(s) for s in reversed(range(30))][::-1]  # a resume starts anywhere
    assert forward_order == backwards
    assert order(srcs, [40, 24], batches="mixed", seed=4).global_rows(0) != forward_order[0]
    far = order(srcs, [40, 24], batches="mixed")
    assert far.global_rows(9000) == order(srcs, [40, 24], batches="mixed").global_rows(9000)  # past a block


@pytest.mark.parametrize("batches", ["homogeneous", "mixed"])
def test_process_slices_concatenate_to_the_global_rows(batches):
    srcs = sources({"path": "a.jsonl", "weight": 1.0}, {"path": "b.jsonl", "weight": 2.0}, batches=batches)
    one = order(srcs, [40, 24], batches=batches)
    two = [order(srcs, [40, 24], batches=batches, process_index=p, process_count=2) for p in range(2)]
    for s in range(12):
        assert two[0].rows(s) + two[1].rows(s) == one.global_rows(s)


def test_a_source_smaller_than_a_batch_is_named():
    with pytest.raises(ValueError, match=r"data source 'b' \(b.jsonl\): 4 records are fewer than one global batch"):
        order(sources({"path": "a.jsonl"}, {"path": "b.jsonl"}), [40, 4])


# ----------------------------------------------------------------------------- batches and loss


def two_sources(a, b) -> list[dict]:
    """a: the run's group size, an instruction; b: groups of 2, no in-batch negatives, never a thought."""
    return [{"path": str(a), "name": "a", "weight": 1.0, "instruction": "jazz oslo "},
            {"path": str(b), "name": "b", "weight": 2.0, "group_size": 2, "in_batch_negatives": False,
             "thought_dropout": 1.0}]


def run_config(two_files, **changes):
    config = tiny_config(**{"data.synthetic": False, **changes})
    config.data.train = two_sources(*two_files)
    return config


def test_batches_take_each_sources_settings(two_files, tmp_path):
    config = run_config(two_files)
    data = batches_lib.prepare_data(config, tmp_path)
    tokenizer = make_tokenizer()
    formatting.add_special_tokens(tokenizer)
    b = batches_lib.make_batches(config, data, tokenizer)
    kinds = {}
    for step in range(12):
        (k,) = {k for k, _ in b.rows(step)}
        batch = b.local_batch(step)
        kinds[k] = batch
        groups = batch["doc_ids"].shape[0] // batch["query_ids"].shape[0]
        assert groups == (3 if k == 0 else 2)  # a's group size is the run's (the demo's 3); b's is 2
        np.testing.assert_array_equal(batch["own_group_only"], np.full(8, k == 1, np.int32))
    assert set(kinds) == {0, 1}
    texts = [tokenizer.decode(row[m == 1]) for row, m in zip(kinds[0]["query_ids"], kinds[0]["query_mask"])]
    assert all(t.split()[:3] == ["<query>", "jazz", "oslo"] for t in texts)  # the instruction opens each query
    assert kinds[1]["gen_weights"].sum() == 0  # b drops every thought
    assert kinds[0]["gen_weights"].sum() > 0


def test_without_in_batch_negatives_a_query_sees_only_its_group():
    rng = np.random.default_rng(0)
    b, g, dim = 4, 3, 8
    q = rng.standard_normal((b, dim)).astype(np.float32)
    d = rng.standard_normal((b * g, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    own = np.array([1, 0, 1, 0], np.int32)
    cfg = ml_collections.ConfigDict(dict(temperature=0.05, w_distill=0.0))
    got = forward.embedding_losses(jnp.asarray(q), jnp.asarray(d), {"own_group_only": jnp.asarray(own)}, cfg)
    scores = q @ d.T / 0.05
    ce = []
    for i in range(b):
        cols = np.arange(i * g, (i + 1) * g) if own[i] else np.arange(b * g)
        s = scores[i, cols]
        target = list(cols).index(i * g)
        ce.append(np.log(np.exp(s - s.max()).sum()) + s.max() - s[target])
    # float32 softmax over <= 12 scores of size <= 20: rounding well below 1e-5.
    np.testing.assert_allclose(float(got["ctr_loss"]), np.mean(ce), rtol=1e-5)
    mask = np.asarray(losses.other_groups(jnp.asarray(own), b * g, g))
    assert mask.sum() == 2 * (b * g - g) and not mask[1].any() and not mask[0, :g].any()


def _losses(history):
    return {h["step"]: h["loss"] for h in history}


def test_training_on_two_sources_logs_their_counts_and_resumes_exactly(two_files, tmp_path, monkeypatch):
    config = run_config(two_files, **{"train.num_steps": 6, "train.checkpoint_every": 3})
    whole = loop.train(config, tmp_path / "whole")
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["queries/a"] + rows[-1]["queries/b"] == 6 * 8
    assert rows[-1]["queries/a"] > 0 and rows[-1]["queries/b"] > 0

    # A crash after step 3's checkpoint, then the same command again.
    real = batches_lib.Batches.local_batch

    def crash_at_step_4(self, step):
        if step == 4:
            raise KeyboardInterrupt("killed")
        return real(self, step)

    monkeypatch.setattr(batches_lib.Batches, "local_batch", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        loop.train(config, tmp_path / "resumed")
    monkeypatch.setattr(batches_lib.Batches, "local_batch", real)
    resumed = loop.train(config, tmp_path / "resumed")
    assert resumed.history[0]["step"] == 4
    want = _losses(whole.history)
    for step, loss in _losses(resumed.history).items():
        assert loss == pytest.approx(want[step], rel=1e-6, abs=1e-6), step


def test_resuming_on_other_sources_is_refused(two_files, tmp_path):
    config = run_config(two_files, **{"train.num_steps": 2, "train.checkpoint_every": 2})
    loop.train(config, tmp_path / "w")
    config.data.train[1]["weight"] = 5.0
    with pytest.raises(ValueError, match="resuming would not see the same batches"):
        loop.train(config, tmp_path / "w")


def test_two_processes_read_their_slices_and_match_one_process(two_files, tmp_path):
    from tests.test_train import logged, run_two_processes

    single = loop.train(run_config(two_files, **{"train.num_steps": 3, "mesh.shape": (2, 2, 2)}), tmp_path / "one")
    workdir = run_two_processes(tmp_path, **{"data.synthetic": False, "data.train": repr(two_sources(*two_files)),
                                              "train.num_steps": 3, "mesh.shape": "(2,2,2)"})
    multi = logged(workdir)
    assert len(single.history) == 3
    last = single.history[-1]
    assert (last["queries/a"], last["queries/b"]) == (8, 16)  # both sources, so both batch shapes, are met
    for h in single.history:
        # Two processes reduce the same global batch in another order: float32 sums, 2e-5 relative.
        assert multi[h["step"]] == pytest.approx(h["loss"], rel=2e-5), h["step"]
