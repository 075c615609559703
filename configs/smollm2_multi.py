"""SmolLM2-135M-Instruct on several datasets in one run: the shared MS MARCO and NQ training records.

  python -m o1_jax.train --config configs/smollm2_multi.py --workdir /tmp/o1_multi
  python -m o1_jax.train --config configs/smollm2_multi.py:mixed --workdir /tmp/o1_multi_mixed

`data.train` is a list of sources (o1_jax/data/mixture.py): each has its path, a sampling weight
(here twice as many MS MARCO steps as NQ steps), its own group size and thought dropout, whether its
queries see the other queries' documents as negatives, and an instruction prepended to its queries.
By default every step's queries come from one source ("homogeneous", as the original's
--same_dataset_within_batch); `:mixed` draws each step's queries from all of them, which needs one
group size. Each source's query count is logged as `queries/<name>` (TensorBoard, metrics.jsonl).
The records are ../shared/data/msmarco_toy_train (10 + 11 MS MARCO and 10 NQ queries, no thoughts:
each query trains without one), so this runs a few steps on a laptop; point the paths at real files
(python -m o1_jax.data.prepare / o1_jax.synthesize) for a real run.
"""

from o1_jax.defaults import train_config

TOY = "../shared/data/msmarco_toy_train"


def get_config(arg: str | None = None):
    c = train_config()
    c.model.init_from = "shipped:smollm2-135m-instruct"
    c.data.train = [
        dict(path=f"{TOY}/flagembedding_msmarco.jsonl", name="msmarco", weight=2.0, group_size=4),
        dict(path=f"{TOY}/flagembedding_llara_msmarco.jsonl", name="msmarco_llara", weight=2.0, group_size=4),
        # NQ's negatives are Wikipedia passages close to each other; its queries here are scored
        # against their own group only, as FlagEmbedding does for such sets.
        dict(path=f"{TOY}/flagembedding_nq.jsonl", name="nq", weight=1.0, group_size=2, in_batch_negatives=False,
             instruction=""),
    ]
    c.data.max_query_tokens = 32
    c.data.max_thought_tokens = 64
    c.data.max_doc_tokens = 96
    c.model.remat_policy = "full"  # a laptop's memory: recompute each layer in the backward pass
    c.optimizer.lr = 2e-5
    c.train.global_batch_size = 8
    c.train.num_steps = 6
    c.train.log_every = 1
    c.train.checkpoint_every = 3
    c.eval.at_end = False  # no BEIR split of these records; evaluate with python -m o1_jax.evaluate
    if arg == "mixed":
        c.data.batches = "mixed"
        for source in c.data.train:
            source["group_size"] = 4
    elif arg:
        raise ValueError(f"configs/smollm2_multi.py: unknown variant {arg!r} (expected 'mixed' or nothing)")
    return c
