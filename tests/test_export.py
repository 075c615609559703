"""Export: HF causal-LM logits, sentence-transformers documents, the model card, overwrite and atomicity."""

import functools
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
import yaml

from o1_jax import export as export_mod
from o1_jax import forward
from o1_jax.data import synthetic
from o1_jax.hf import model_card, o1_folder
from o1_jax.inference.embedder import O1Embedder
from o1_jax.models.llama import default_positions
from o1_jax.training import loop, workdir as workdir_lib
from tests.test_train import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The LoRA run also unties the LM head, so both embedding layouts are exported.
LORA = {"model.lora.rank": 4, "model.lora.targets": ("q_proj", "v_proj"), "optimizer.lr": 0.05,
        "model.fresh.tie_word_embeddings": False}

_world = synthetic.make_world(0)
# Plain "title text" strings of different lengths; the last is longer than max_doc_tokens (16): truncated.
DOCS = [
    "{title} {text}".format(**_world.doc(7)),
    _world.name(3),
    "lives in oslo",
    " ".join("{title} {text}".format(**_world.doc(p)) for p in (11, 12)),
]
QUERIES = ["where does the friend of " + _world.name(5) + " live ?", "what is the job of the cousin of "
           + _world.name(9) + " ?"]
THOUGHTS = ["the friend of " + _world.name(5) + " is " + _world.name(1) + " .", ""]


@pytest.fixture(scope="module", autouse=True)
def quick_compiles():
    """The tiny training runs and restores compile with most XLA optimisations off: the same numbers, half the time."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def _train(workdir, **changes):
    # Two steps, a checkpoint at each; trained on one device, restored by export onto all eight (mesh (1, -1, 1)).
    config = tiny_config(**{"train.num_steps": 2, "train.checkpoint_every": 1, "eval.at_end": False, **changes})
    loop.train(config, workdir, devices=jax.devices()[:1])
    return workdir


EVAL = {"folder": "demo", "split": "test", "num_queries": 8, "num_docs": 120,
        "modes": {"no_think": {"ndcg@10": 0.25, "mrr@10": 0.2, "recall@100": 0.5, "recall@1000": 1.0,
                               "query_encode_s": 0.1},
                  "think(k=1)": {"ndcg@10": 0.75, "mrr@10": 0.7, "recall@100": 1.0, "recall@1000": 1.0,
                                 "query_encode_s": 0.3}}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{"full" | "lora": (workdir, export folder)}; the full run has evaluation results, the LoRA run none."""
    root = tmp_path_factory.mktemp("export")
    full = _train(root / "full", **{"data.query_instruction": "jazz "})  # a word of the synthetic vocabulary
    (full / "eval").mkdir()
    (full / "eval" / "demo-test.json").write_text(json.dumps(EVAL))
    lora = _train(root / "lora", **LORA)
    return {"full": (full, export_mod.export(full, root / "full_hf")),
            "lora": (lora, export_mod.export(lora, root / "lora_hf"))}


@functools.cache
def _o1(workdir, step=None):
    restored = workdir_lib.restore_params(workdir, step)
    model, params, tokenizer, config = restored.model, restored.params, restored.tokenizer, restored.config
    d = config.data
    return O1Embedder(model, params, tokenizer, max_query_tokens=d.max_query_tokens,
                      max_thought_tokens=d.max_thought_tokens, max_doc_tokens=d.max_doc_tokens)


def _logits(emb: O1Embedder, out: pathlib.Path):
    """(o1_jax logits, HF logits, mask) on left-padded queries with thoughts; HF gets o1_jax's positions."""
    batch = emb.formatter.collate_queries(QUERIES, THOUGHTS)
    ids, mask = batch["query_ids"], batch["query_mask"]
    ours = np.asarray(emb.model.apply({"params": emb.params}, jnp.asarray(ids),
                                      attention_mask=jnp.asarray(mask)).logits)  # [B, T, V]
    hf_model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    positions = torch.from_numpy(np.asarray(default_positions(jnp.asarray(mask))).astype(np.int64))
    with torch.no_grad():
        theirs = hf_model(input_ids=torch.from_numpy(ids.astype(np.int64)), attention_mask=torch.from_numpy(mask),
                          position_ids=positions).logits.numpy()
    return ours, theirs, mask.astype(bool)


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_transformers_loads_the_export_with_the_same_logits(exported, kind):
    workdir, out = exported[kind]
    emb = _o1(workdir)
    ours, theirs, real = _logits(emb, out)
    np.testing.assert_allclose(theirs[real], ours[real], atol=1e-4, rtol=0)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert transformers.GenerationConfig.from_pretrained(out).eos_token_id == emb.tokenizer.eos_token_id
    if kind == "lora":  # the adapters were merged: without them the logits differ
        cfg = emb.model.cfg
        assert cfg.lora_rank == 4
        no_lora = jax.tree_util.tree_map_with_path(
            lambda p, x: jnp.zeros_like(x) if "lora_b" in jax.tree_util.keystr(p) else x, emb.params)
        batch = emb.formatter.collate_queries(QUERIES, THOUGHTS)
        base = np.asarray(emb.model.apply({"params": no_lora}, jnp.asarray(batch["query_ids"]),
                                          attention_mask=jnp.asarray(batch["query_mask"])).logits)
        assert np.abs(base[real] - theirs[real]).max() > 1e-2

    # The tokenizer: O1 special tokens at the training ids, left padding, nothing added to plain text.
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert {t: tok.convert_tokens_to_ids(t) for t in emb.special} == emb.special
    assert tok.padding_side == "left"
    prompt = f"<query>{QUERIES[0]}</query><thought>"
    assert tok(prompt)["input_ids"] == emb.formatter.prompt_ids(QUERIES[0])


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_sentence_transformers_encodes_documents_like_o1_jax(exported, kind):
    from sentence_transformers import SentenceTransformer

    workdir, out = exported[kind]
    emb = _o1(workdir)
    st = SentenceTransformer(str(out), device="cpu")
    # ST's AutoModel (LlamaModel) read every weight of the causal-LM folder: none missing, none re-initialised.
    base, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
    assert type(base).__name__ == type(st[0].auto_model).__name__ == "LlamaModel"
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert info["unexpected_keys"] == ({"lm_head.weight"} if kind == "lora" else set())  # the untied LM head
    causal = transformers.AutoModelForCausalLM.from_pretrained(out).model.state_dict()
    loaded = st[0].auto_model.state_dict()
    assert set(loaded) == set(causal)
    for name, tensor in causal.items():
        assert torch.equal(loaded[name], tensor), name
    assert st.max_seq_length == emb.formatter.max_doc_tokens + 1

    got = st.encode(DOCS, batch_size=3)  # mixes lengths within a batch: padding must not matter
    want = emb.encode_corpus(DOCS)
    cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cosine.min() >= 0.9999, cosine
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
    features = st.preprocess(DOCS)
    emb_id = emb.special["<emb>"]
    for ids, mask, doc in zip(features["input_ids"], features["attention_mask"], DOCS):
        assert ids[mask.bool()].tolist() == emb.formatter.doc_ids(doc)  # `{doc}<emb>`, truncated before <emb>
        assert ids[mask.bool()][-1] == emb_id


def _python_blocks(card: str) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL))


def test_model_card_has_config_evaluation_tokens_formats_and_working_snippets(exported):
    workdir, out = exported["full"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    saved = json.loads((workdir / "run_config.json").read_text())
    config_yaml = re.search(r"```yaml\n(.*?)```", card, flags=re.DOTALL).group(1)
    assert yaml.safe_load(config_yaml) == saved["config"]
    assert "| demo-test.json | test | 8 | 120 | think(k=1) | 0.7500 | 0.7000 | 1.0000 | 1.0000 |" in card
    assert "query_encode_s" not in card
    assert "None found" in (exported["lora"][1] / "README.md").read_text()
    assert "LoRA adapters merged" in (exported["lora"][1] / "README.md").read_text()
    assert "UNEXPECTED" in (exported["lora"][1] / "README.md").read_text() and "UNEXPECTED" not in card
    emb = _o1(workdir)
    for token, i in emb.special.items():
        assert f"| `{token}` | {i} |" in card
    for fmt in ("`<query>{query}</query><thought>{thought}<eos><emb>`", "`<query>{query}</query><thought><emb>`",
                "`<query>{query}</query><thought>`", "`{title} {text}<emb>`"):
        assert fmt in card
    assert "step 2" in card

    # The usage snippets run as written and agree with o1_jax.
    namespace: dict = {}
    exec(_python_blocks(card).replace(model_card.PATH_PLACEHOLDER, str(out)), namespace)  # noqa: S102
    q = namespace["query"]
    np.testing.assert_allclose(namespace["query_emb_no_think"][0], emb.encode_queries([q])[0], atol=1e-5)
    # As O1Embedder's one-pass thinking: prompt, the generated thought, <eos><emb> (even for an empty thought).
    f = emb.formatter
    thought_ids = emb.tokenizer(namespace["thought"], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    ids = np.asarray([f.prompt_ids(q) + thought_ids + [f.eos_id, f.emb_id]], np.int32)
    with_thought = np.asarray(forward.embed(emb.model, emb.params, ids, np.ones_like(ids)))
    np.testing.assert_allclose(namespace["query_emb"][0], with_thought[0], atol=1e-5)
    np.testing.assert_allclose(namespace["doc_emb"], emb.encode_corpus(namespace["docs"]), atol=1e-5)
    assert namespace["scores"].shape == (1, len(namespace["docs"]))


def test_a_non_empty_out_needs_overwrite_and_a_failed_export_leaves_nothing(exported, monkeypatch):
    workdir, _ = exported["full"]
    out = workdir.parent / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    # The command line: exit code 2, one sentence, nothing touched, before any model is loaded.
    proc = subprocess.run([sys.executable, "-m", "o1_jax.export", "--workdir", str(workdir), "--out", str(out)],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 2, proc.stderr
    assert "exists and is not empty" in proc.stderr and "--overwrite" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    with pytest.raises(FileExistsError, match="taken: exists and is not empty"):
        export_mod.export(workdir, out)

    def broken_card(folder, run, model):
        (folder / "README.md").write_text("half")
        raise RuntimeError("disk full")

    siblings = sorted(p.name for p in workdir.parent.iterdir())
    monkeypatch.setattr(model_card, "write_model_card", broken_card)
    with pytest.raises(RuntimeError, match="disk full"):  # a new folder: never appears
        export_mod.export(workdir, workdir.parent / "new")
    with pytest.raises(RuntimeError, match="disk full"):  # an existing folder: left as it was
        export_mod.export(workdir, out, overwrite=True)
    assert sorted(p.name for p in workdir.parent.iterdir()) == siblings  # no temp folder left, no "new"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    monkeypatch.undo()

    # --overwrite replaces it; --step picks an older checkpoint.
    assert export_mod.export(workdir, out, step=1, overwrite=True) == out
    assert not (out / "keep.txt").exists() and (out / "modules.json").is_file()
    assert "step 1" in (out / "README.md").read_text()
    assert sorted(p.name for p in workdir.parent.iterdir()) == siblings
    _, step1, real = _logits(_o1(workdir, step=1), out)
    _, step2, _ = _logits(_o1(workdir, step=2), exported["full"][1])
    assert np.abs(step1[real] - step2[real]).max() > 1e-3  # really the other checkpoint


def test_bad_input_is_one_clear_error(tmp_path, exported):
    workdir, _ = exported["full"]
    with pytest.raises(ValueError, match="is the workdir"):
        export_mod.export(workdir, workdir, overwrite=True)
    with pytest.raises(FileNotFoundError, match="no run_config.json"):
        export_mod.export(tmp_path, tmp_path / "out")
    bad = tmp_path / "bad"  # all a run writes, but a malformed evaluation file: stops before any restore
    for folder in ("eval", "tokenizer", "checkpoints"):
        (bad / folder).mkdir(parents=True)
    (bad / "run_config.json").write_text(json.dumps({"config": {}, "original_vocab": 10}))
    (bad / "eval" / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"eval/x.json: not valid JSON"):
        export_mod.export(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_export_keeps_the_runs_lengths_and_thinking_settings(exported):
    """O1Embedder on the export uses the run's lengths and sampling (not 64 / 128 / 256) and embeds
    like the workdir: the same parameters (LoRA merged, float32) and the same formats."""
    workdir, out = exported["full"]
    settings = json.loads((out / o1_folder.SETTINGS).read_text())
    config = workdir_lib.read_run_config(workdir)[1]
    assert settings == {"max_query_tokens": config.data.max_query_tokens, "max_thought_tokens": config.data.max_thought_tokens,
                        "max_doc_tokens": config.data.max_doc_tokens, "think_temperature": config.eval.temperature,
                        "think_top_p": config.eval.top_p, "num_thoughts": config.eval.num_thoughts,
                        "query_instruction": "jazz "}
    from_export, from_workdir = O1Embedder.from_pretrained(out), O1Embedder.from_pretrained(workdir)
    for emb in (from_export, from_workdir):
        f = emb.formatter
        assert (f.max_query_tokens, f.max_thought_tokens, f.max_doc_tokens) == (12, 20, 14)  # configs/demo.py
        assert (emb.think_temperature, emb.think_top_p) == (config.eval.temperature, config.eval.top_p)
        assert emb.query_instruction == "jazz "
    np.testing.assert_allclose(from_export.encode_queries(QUERIES), from_workdir.encode_queries(QUERIES), rtol=0,
                               atol=1e-5)  # unit vectors; the export's weights are the workdir's, reordered sums only
