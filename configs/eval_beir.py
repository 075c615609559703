"""Evaluate an O1 embedder on a BEIR folder, without and with thinking.

  python -m o1_jax.evaluate --config configs/eval_beir.py \\
      --config.data.path=../shared/data/scifact --config.model.path=/tmp/o1_scifact
"""

import ml_collections


def get_config(arg: str | None = None):
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(path="", dtype="float32"))  # training workdir or HF folder
    c.data = ml_collections.ConfigDict(dict(path="", split="test"))  # BEIR folder
    c.modes = ("no_think", "think")
    c.num_thoughts = 3  # k thoughts per query in think mode (the original used 3)
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
