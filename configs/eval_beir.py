"""Evaluate an O1 embedder on a BEIR folder, without and with thinking.

  python -m o1_jax.evaluate --config configs/eval_beir.py \\
      --config.data.path=../shared/data/scifact --config.model.path=/tmp/o1_scifact
"""

import ml_collections


def get_config(arg: str | None = None):
    c = ml_collections.ConfigDict()
    # kind: o1 (path: a training workdir or HF folder), dense (path: a sentence-transformers folder or
    # package:NAME/sub/folder; exact search) or bm25 (bm25s, no path). Baselines need c.output.
    c.model = ml_collections.ConfigDict(dict(kind="o1", path="", dtype="float32"))
    c.data = ml_collections.ConfigDict(dict(path="", split="test"))  # BEIR folder
    c.modes = ("no_think", "think")  # o1 only; also "think:K" for K thoughts
    c.num_thoughts = 3  # k thoughts per query in "think" mode (the original used 3)
    c.compare_scann = False  # also search a ScaNN index; report its metrics and top-10 recall vs exact
    # Token limits (0: the model's own, from its training config; an HF folder: 64 / 128 / 256).
    c.max_query_tokens = 0
    c.max_thought_tokens = 0
    c.max_doc_tokens = 0
    c.aggregate = "mean_normalized"  # or "mean", as the original
    c.top_k = 1000
    c.index_mode = "auto"  # exact below 20k documents, ScaNN above
    c.max_queries = 0  # 0 = all judged queries
    c.batch_size = 0  # 0 = the embedder's default
    c.seed = 0
    c.cache_dir = ""  # corpus encodings; "" = <model path>/eval/cache
    c.output = ""  # "" = <model path>/eval/<folder>-<split>.json
    if arg:
        raise ValueError(f"configs/eval_beir.py: unknown variant {arg!r}")
    return c
