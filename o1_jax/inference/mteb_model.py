"""MTEB (`mteb` 2.x) over an `O1Embedder`: the encoder protocol, and a retrieval task read from a local BEIR folder.

    import mteb
    from o1_jax.data.synthetic import write_demo_data
    from o1_jax.inference.mteb_model import O1MtebModel, local_beir_task

    folder = write_demo_data("/tmp/o1_demo_beir", seed=0, num_train=8, num_test=200)  # any BEIR folder
    model = O1MtebModel.from_pretrained("/tmp/o1_demo", num_thoughts=1)   # a workdir or an HF folder
    task = local_beir_task(folder, split="test", name="O1DemoRetrieval")
    result = mteb.evaluate(model, task, cache=mteb.ResultCache("/tmp/mteb_results"))
    result.task_results[0].get_score()                                    # nDCG@10

mteb 2.x calls `encode(DataLoader, *, task_metadata, hf_split, hf_subset, prompt_type, **encode_kwargs)`;
each batch is a dict of lists: queries carry "text" (with an instruction appended when the task has
one), documents "text" (title and body joined) plus "body" and "title". The adapter gathers every
batch first and makes one `encode_corpus` / `encode_queries` call, so the embedder sorts and pads
documents exactly as `o1_jax.retrieval.beir_eval` does, and queries think with `num_thoughts`.

mteb is optional: only this module imports it, nothing else in o1_jax imports this module.
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any

import jax
import mteb
import numpy as np
from datasets import Dataset
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from o1_jax.data.beir import load_beir
from o1_jax.inference.embedder import O1Embedder
from o1_jax.retrieval.beir_eval import params_fingerprint

__all__ = ["O1MtebModel", "LocalBeirRetrieval", "local_beir_task", "model_meta", "batch_documents", "batch_queries"]

DEFAULT_NAME = "o1_jax/o1-embedder"  # mteb requires "organization/model_name"


# ----------------------------------------------------------------------------- the encoder


def batch_documents(batch: dict[str, Any]) -> list[Any]:
    """The documents of one mteb batch: {"title", "text"} when mteb gives the body apart (the format of
    `encode_corpus`, joined by the embedder as BEIR does), else the plain "text" strings."""
    if "body" not in batch:
        return list(batch["text"])
    titles = batch.get("title") or [""] * len(batch["body"])
    return [{"title": t, "text": b} for t, b in zip(titles, batch["body"], strict=True)]


def batch_queries(batch: dict[str, Any]) -> list[str]:
    """The queries of one mteb batch: "text", which carries the task's per-query instruction if any."""
    return list(batch["text"])


def _kind(prompt_type) -> str:
    """'query' or 'document'; mteb passes no prompt_type for symmetric tasks (STS, clustering), read as documents."""
    if prompt_type is None:
        return "document"
    kind = str(getattr(prompt_type, "value", prompt_type)).lower()
    if kind not in (PromptType.query.value, PromptType.document.value):
        raise ValueError(f"prompt_type {prompt_type!r}: expected mteb's PromptType.query or PromptType.document")
    return kind


def model_meta(embedder: O1Embedder, *, name: str = DEFAULT_NAME, revision: str | None = None,
               num_thoughts: int = 0, seed: int = 0, aggregate: str = "mean_normalized") -> ModelMeta:
    """mteb's metadata of an embedder. `revision` defaults to the parameters' fingerprint, so mteb's
    result cache never mixes checkpoints; the thinking settings go into `experiment_kwargs`, which
    mteb folds into the cache path, so think and no-think runs are stored apart."""
    experiment = {"num_thoughts": num_thoughts}
    if num_thoughts:
        experiment.update(seed=seed, aggregate=aggregate)
    return ModelMeta(
        loader=None, name=name, revision=revision or params_fingerprint(embedder.params)[:16],
        release_date=None, languages=None,
        n_parameters=int(sum(np.size(x) for x in jax.tree_util.tree_leaves(embedder.params))),
        memory_usage_mb=None, max_tokens=embedder.formatter.max_doc_tokens,
        embed_dim=embedder.model.cfg.hidden_size, license=None, open_weights=None,
        public_training_code=None, public_training_data=None, framework=["JAX"],
        # Inner product, as o1_jax's index: equal to cosine for unit vectors, and right for
        # aggregate="mean" (the original's un-normalised mean), which cosine would re-normalise.
        similarity_fn_name=ScoringFunction.DOT_PRODUCT,
        use_instructions=False,  # mteb's task prompts are not used; the run's own query_instruction is
        training_datasets=None, experiment_kwargs=experiment,
    )


class O1MtebModel(AbsEncoder):
    """mteb's `EncoderProtocol` over an `O1Embedder`: documents through `encode_corpus`, queries
    through `encode_queries(num_thoughts=...)`; returns float32 numpy arrays. No network."""

    def __init__(self, embedder: O1Embedder, *, num_thoughts: int = 0, seed: int = 0,
                 aggregate: str = "mean_normalized", name: str = DEFAULT_NAME, revision: str | None = None):
        if num_thoughts < 0:
            raise ValueError(f"num_thoughts must be >= 0, got {num_thoughts}")
        self.model = embedder
        self.num_thoughts, self.seed, self.aggregate = num_thoughts, seed, aggregate
        self.mteb_model_meta = model_meta(embedder, name=name, revision=revision, num_thoughts=num_thoughts,
                                          seed=seed, aggregate=aggregate)

    @classmethod
    def from_pretrained(cls, path, *, num_thoughts: int = 0, seed: int = 0, aggregate: str = "mean_normalized",
                        name: str = DEFAULT_NAME, revision: str | None = None, **kwargs) -> "O1MtebModel":
        """`O1Embedder.from_pretrained(path, **kwargs)` wrapped; see `__init__` for the rest."""
        return cls(O1Embedder.from_pretrained(path, **kwargs), num_thoughts=num_thoughts, seed=seed,
                   aggregate=aggregate, name=name, revision=revision)

    def encode(self, inputs, *, task_metadata=None, hf_split: str = "", hf_subset: str = "",
               prompt_type: PromptType | None = None, **kwargs) -> np.ndarray:
        """`[N, D]` float32 for the rows of `inputs` (mteb's DataLoader, or any iterable of batch
        dicts), in order. mteb's encode kwargs (batch_size, show_progress_bar) are ignored: the
        embedder batches by its own `batch_size`."""
        batches = list(inputs)
        if _kind(prompt_type) == "query":
            texts = [q for b in batches for q in batch_queries(b)]
            if self.num_thoughts == 0:
                out = self.model.encode_queries(texts)
            else:
                out = self.model.encode_queries(texts, num_thoughts=self.num_thoughts, seed=self.seed,
                                                aggregate=self.aggregate)
        else:
            out = self.model.encode_corpus([d for b in batches for d in batch_documents(b)])
        return np.asarray(out, np.float32)


# ----------------------------------------------------------------------------- a local task


def folder_revision(folder: pathlib.Path, split: str) -> str:
    """sha256 (16 hex digits) of the split's three files: stands in for the hub revision, so mteb's
    result cache tells two folders (or an edited one) apart."""
    h = hashlib.sha256()
    for path in (folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _task_metadata(folder: pathlib.Path, split: str, name: str) -> mteb.TaskMetadata:
    return mteb.TaskMetadata(
        name=name,
        description=f"A BEIR folder on local disk ({folder}), split {split!r}.",
        # Never downloaded: load_data below reads the folder. The path is only a label.
        dataset={"path": f"local/{folder.name}", "revision": folder_revision(folder, split)},
        type="Retrieval", category="t2t", modalities=["text"], reference=None,
        eval_splits=[split], eval_langs=["eng-Latn"], main_score="ndcg_at_10",
        date=None, domains=None, task_subtypes=None, license="not specified",
        annotations_creators="derived", dialect=[], sample_creation="created", bibtex_citation="",
    )


class LocalBeirRetrieval(AbsTaskRetrieval):
    """An mteb retrieval task over a local BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv),
    parsed by `o1_jax.data.beir.load_beir` (the reader `evaluate_beir` uses); nothing is fetched.
    Made by `local_beir_task`: mteb reads `metadata` from the class (unload_data drops an instance's)."""

    folder: pathlib.Path
    split: str
    ignore_identical_ids = False  # mteb's default; local_beir_task(..., ignore_identical_ids=True) for ArguAna / Quora

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        if self.data_loaded:
            return
        corpus, queries, qrels = load_beir(self.folder, self.split)
        # Queries in qrels order, as evaluate_beir's judged_split: same batches, same padding.
        judged = [q for q in qrels if q in queries]
        self.dataset = {"default": {self.split: {
            "corpus": Dataset.from_dict({"id": list(corpus), "title": [d["title"] for d in corpus.values()],
                                         "text": [d["text"] for d in corpus.values()]}),
            "queries": Dataset.from_dict({"id": judged, "text": [queries[q] for q in judged]}),
            "relevant_docs": {q: dict(qrels[q]) for q in judged},
            "top_ranked": None,
        }}}
        self.data_loaded = True


def local_beir_task(folder, split: str = "test", name: str = "LocalBeirRetrieval",
                    ignore_identical_ids: bool = False) -> LocalBeirRetrieval:
    """An mteb task over `folder`'s `split`, named `name` (mteb's results are filed under it)."""
    folder = pathlib.Path(folder)
    attrs = {"metadata": _task_metadata(folder, split, name), "folder": folder, "split": split,
             "ignore_identical_ids": ignore_identical_ids}
    return type(name, (LocalBeirRetrieval,), attrs)()
