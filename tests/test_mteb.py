"""mteb (2.x) over O1Embedder (issue 16 §3): the encoder protocol as mteb calls it, and mteb evaluating
the demo task's local BEIR folder offline, scoring what o1_jax's own evaluation scores.

The default run uses a tiny random Llama (scores near chance, but every ranking is compared); the
slow test trains the demo and compares real scores (think nDCG@10 near 1)."""

import json
import pathlib
import socket
import sys

import numpy as np
import pytest

mteb = pytest.importorskip("mteb")  # optional: the library never imports it (o1_jax/inference/mteb_model.py)

import jax  # noqa: E402
from datasets import Dataset  # noqa: E402
from mteb._create_dataloaders import create_dataloader  # noqa: E402  (the loader mteb's search wrapper builds)
from mteb.models.model_meta import ScoringFunction  # noqa: E402
from mteb.types import PromptType  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from o1_jax.data import synthetic  # noqa: E402
from o1_jax.inference.embedder import O1Embedder  # noqa: E402
from o1_jax.inference.mteb_model import O1MtebModel, local_beir_task  # noqa: E402
from o1_jax.retrieval.beir_eval import evaluate_beir, judged_split, params_fingerprint, search_run  # noqa: E402
from o1_jax.retrieval.vector_index import Index  # noqa: E402
from o1_jax.training import loop  # noqa: E402
from tests.tiny_models import save_tiny_hf  # noqa: E402
from tests.tolerances import reorder_atol  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import demo  # noqa: E402

# mteb rounds its nDCG and recall means to 5 decimals (retrieval_metrics.parse_metrics_from_scores),
# so on identical rankings they differ from o1_jax's unrounded means by at most half a unit there.
ROUNDED_ATOL = 5e-6 + 1e-12
# mteb's MRR is its own unrounded mean (o1_jax's is pytrec_eval's recip_rank on the top 10): equal
# rankings give the same per-query values, the means differ by summation order only.
MRR_ATOL = 1e-12
METRIC_NAMES = {"ndcg@10": "ndcg_at_10", "mrr@10": "mrr_at_10", "recall@100": "recall_at_100",
                "recall@1000": "recall_at_1000"}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: the hub's offline switches on, and any socket connection or DNS lookup fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("MTEB_CACHE", str(tmp_path / "mteb_default_cache"))  # were a default cache used

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] or args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random Llama with the synthetic tokenizer, as a plain HF folder (tests/test_embedder.py's)."""
    return pathlib.Path(save_tiny_hf(tmp_path_factory.mktemp("hf") / "tiny"))


@pytest.fixture(scope="module")
def embedder(tiny_folder):
    return O1Embedder.from_pretrained(tiny_folder, batch_size=64, max_thought_tokens=8)


@pytest.fixture(scope="module")
def beir_folder(tmp_path_factory):
    """The demo task's BEIR test split: 1600 documents, 200 held-out queries."""
    return synthetic.write_demo_data(tmp_path_factory.mktemp("demo"), seed=0, num_train=8, num_test=200)


class RecordingModel(O1MtebModel):
    """Keeps what mteb passed to `encode` and what it got back."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def encode(self, inputs, **kwargs):
        out = super().encode(inputs, **kwargs)
        self.calls.append({"inputs": inputs, "kwargs": kwargs, "out": out})
        return out

    def outputs(self, prompt_type):
        return np.concatenate([c["out"] for c in self.calls if c["kwargs"]["prompt_type"] == prompt_type])


def run_mteb(model, folder, tmp_path, name="O1DemoRetrieval"):
    """mteb.evaluate on the folder's test split; results and predictions under tmp_path only."""
    result = mteb.evaluate(model, local_beir_task(folder, "test", name=name), cache=mteb.ResultCache(tmp_path / "results"),
                           prediction_folder=tmp_path / "predictions", show_progress_bar=False, co2_tracker=False)
    assert not result.exceptions, result.exceptions
    (task_result,) = result.task_results
    (scores,) = task_result.scores["test"]
    predictions = json.loads((tmp_path / "predictions" / f"{name}_predictions.json").read_text())
    return scores, predictions["default"]["test"]


def assert_same_metrics(mteb_scores, o1_scores):
    for ours, theirs in METRIC_NAMES.items():
        atol = MRR_ATOL if ours == "mrr@10" else ROUNDED_ATOL
        assert abs(mteb_scores[theirs] - o1_scores[ours]) <= atol, (ours, mteb_scores[theirs], o1_scores[ours])


def top(docs, k=10):
    return sorted(docs.items(), key=lambda kv: -kv[1])[:k]


# ----------------------------------------------------------------------------- the protocol


def test_the_adapter_is_an_mteb_encoder_with_its_metadata(embedder):
    model = O1MtebModel(embedder)
    assert isinstance(model, mteb.EncoderProtocol)
    meta = model.mteb_model_meta
    assert meta.name == "o1_jax/o1-embedder" and meta.revision == params_fingerprint(embedder.params)[:16]
    assert meta.similarity_fn_name is ScoringFunction.DOT_PRODUCT
    assert meta.embed_dim == embedder.model.cfg.hidden_size
    assert meta.n_parameters == sum(np.size(x) for x in jax.tree_util.tree_leaves(embedder.params))
    # Thinking runs are another experiment, so mteb's result cache keeps them apart.
    assert O1MtebModel(embedder, num_thoughts=2).mteb_model_meta.experiment_kwargs != meta.experiment_kwargs
    assert O1MtebModel(embedder, revision="v1").mteb_model_meta.revision == "v1"
    with pytest.raises(ValueError, match="num_thoughts must be >= 0"):
        O1MtebModel(embedder, num_thoughts=-1)


def test_encode_reads_mtebs_dataloaders_as_encode_corpus_and_encode_queries(embedder):
    """Batches as mteb's own create_dataloader makes them (several per call), and a fake loader."""
    docs = [{"title": "bane tosul", "text": "lives in oslo ."}, {"title": "", "text": "kamo rizel"},
            {"title": "kamo rizel", "text": "works as a baker ."}] * 3
    queries = ["where does the friend of kamo rizel live ?", "what does the neighbour of bane tosul like ?"] * 3
    metadata = mteb.TaskMetadata(name="Probe", description="probe", dataset={"path": "local/probe", "revision": "0"},
                                 type="Retrieval", category="t2t", eval_langs=["eng-Latn"], main_score="ndcg_at_10")
    corpus = Dataset.from_dict({"id": [f"d{i}" for i in range(len(docs))], "title": [d["title"] for d in docs],
                                "text": [d["text"] for d in docs]})
    query_ds = Dataset.from_dict({"id": [f"q{i}" for i in range(len(queries))], "text": queries})
    doc_loader = create_dataloader(corpus, task_metadata=metadata, prompt_type=PromptType.document, batch_size=4)
    query_loader = create_dataloader(query_ds, task_metadata=metadata, prompt_type=PromptType.query, batch_size=4)
    assert {"text", "title", "body"} <= set(next(iter(doc_loader)))  # what the adapter relies on
    model = O1MtebModel(embedder)
    call = dict(task_metadata=metadata, hf_split="test", hf_subset="default", batch_size=4, show_progress_bar=False)

    d = model.encode(doc_loader, prompt_type=PromptType.document, **call)
    assert d.dtype == np.float32 and d.shape == (len(docs), embedder.model.cfg.hidden_size)
    np.testing.assert_array_equal(d, embedder.encode_corpus(docs))  # one call, the same token rows
    np.testing.assert_array_equal(model.encode(query_loader, prompt_type=PromptType.query, **call),
                                  embedder.encode_queries(queries))
    thinking = O1MtebModel(embedder, num_thoughts=2, seed=5)
    np.testing.assert_array_equal(thinking.encode(query_loader, prompt_type=PromptType.query, **call),
                                  embedder.encode_queries(queries, num_thoughts=2, seed=5))
    # Any iterable of batch dicts; no prompt_type (mteb's symmetric tasks) reads documents.
    fake = [{"text": ["kamo rizel", "bane tosul"]}, {"text": ["lives in oslo ."]}]
    np.testing.assert_array_equal(model.encode(fake), embedder.encode_corpus(["kamo rizel", "bane tosul", "lives in oslo ."]))
    with pytest.raises(ValueError, match="expected mteb's PromptType.query or PromptType.document"):
        model.encode(fake, prompt_type="passage")


# ----------------------------------------------------------------------------- mteb.evaluate, offline


def test_mteb_scores_a_local_beir_folder_offline_as_evaluate_beir_does(embedder, beir_folder, tmp_path, offline):
    model = RecordingModel(embedder)
    scores, predictions = run_mteb(model, beir_folder, tmp_path)
    assert all(isinstance(c["inputs"], DataLoader) for c in model.calls)  # mteb 2.x's protocol
    assert {c["kwargs"]["prompt_type"] for c in model.calls} == {PromptType.query, PromptType.document}

    ours = evaluate_beir(embedder, beir_folder, "test", modes=("no_think",))["modes"]["no_think"]
    assert_same_metrics(scores, ours)
    assert 0 < ours["recall@100"] < ours["recall@1000"] < 1  # a random model: informative numbers only here

    # The rankings themselves, query by query, against o1_jax's exact index. Scores: two float32
    # D-term dot products of unit vectors in different orders (torch vs ScaNN's brute force).
    corpus, judged, texts, _ = judged_split(beir_folder, "test")
    index = Index.build(embedder.encode_corpus([corpus[d] for d in corpus]), list(corpus), mode="exact")
    run = search_run(index, embedder.encode_queries(texts), judged, 10)
    atol = reorder_atol(embedder.model.cfg.hidden_size, 1.0)  # 3.8e-6; measured 1.2e-7
    assert sorted(predictions) == sorted(judged)
    for qid in judged:
        theirs, mine = top(predictions[qid]), top(run[qid])
        # Equal lists: this model's closest adjacent top-11 scores are 1.3e-6 apart, 10x the measured
        # score difference, so a different order would be a real difference, not a near tie.
        assert [d for d, _ in theirs] == [d for d, _ in mine], qid
        np.testing.assert_allclose([s for _, s in theirs], [s for _, s in mine], rtol=0, atol=atol)
    # Everything mteb wrote is under tmp_path.
    assert list((tmp_path / "results").rglob("O1DemoRetrieval.json"))
    assert not (tmp_path / "mteb_default_cache").exists()


def test_mteb_thinks_on_queries_with_k_thoughts(embedder, beir_folder, tmp_path, offline):
    model = RecordingModel(embedder, num_thoughts=1)
    scores, _ = run_mteb(model, beir_folder, tmp_path)
    corpus, _, texts, _ = judged_split(beir_folder, "test")
    queries = model.outputs(PromptType.query)
    thought = embedder.encode_queries(texts, num_thoughts=1)
    np.testing.assert_array_equal(queries, thought)  # the same call on the same rows: bit for bit
    assert not np.allclose(queries, embedder.encode_queries(texts), atol=1e-3)  # it did think
    np.testing.assert_array_equal(model.outputs(PromptType.document), embedder.encode_corpus(list(corpus.values())))
    ours = evaluate_beir(embedder, beir_folder, "test", modes=("think:1",))["modes"]["think(k=1)"]
    assert_same_metrics(scores, ours)
    # Filed as its own experiment, beside no-think results of the same checkpoint.
    assert list((tmp_path / "results").rglob("experiments/*num_thoughts_1__*/O1DemoRetrieval.json"))


# ----------------------------------------------------------------------------- a trained demo model


@pytest.mark.slow
def test_mteb_agrees_with_evaluate_beir_on_the_trained_demo(tmp_path, offline):
    """configs/demo.py trained (1 to 4.5 min on 2 cores), then both modes scored by both evaluators."""
    config = demo.get_config()
    loop.train(config, tmp_path / "demo")
    folder = synthetic.write_demo_data(tmp_path / "beir", seed=config.seed, num_train=8,
                                       num_test=config.data.synthetic_test)
    trained = O1Embedder.from_pretrained(tmp_path / "demo")
    ours = evaluate_beir(trained, folder, "test", modes=("no_think", "think:1"))["modes"]
    for k, mode in ((0, "no_think"), (1, "think(k=1)")):
        scores, _ = run_mteb(O1MtebModel(trained, num_thoughts=k), folder, tmp_path / mode)
        assert_same_metrics(scores, ours[mode])
        print(f"{mode}: mteb nDCG@10 {scores['ndcg_at_10']:.5f}, evaluate_beir {ours[mode]['ndcg@10']:.5f}")
    assert ours["think(k=1)"]["ndcg@10"] > ours["no_think"]["ndcg@10"] + 0.3  # the demo's point: thinking helps
