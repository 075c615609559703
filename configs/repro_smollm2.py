"""The small-scale reproduction (issue 7): SmolLM2-135M-Instruct trained as an O1 embedder (joint loss)
on thought-augmented SciFact train + a 256-query NFCorpus train subset, sized for a 2-core CPU.

The whole run (data, thoughts, both trainings, every evaluation row) is `launch/local/repro_smollm2.sh`;
its training step alone:

  python -m o1_jax.train --config configs/repro_smollm2.py --workdir /tmp/repro/o1 \\
      --config.data.train=/tmp/repro/train_thoughts.jsonl

The method's loss settings are kept (temperature 0.02, 0.8 x InfoNCE + 0.2 x thought CE, 10% of
queries without their thought). Reduced for the CPU, identically in the no-think twin
(configs/repro_smollm2_nothink.py): one epoch (1,065 records, 66 steps of 16 queries), groups of 4
(the positive + 3 of the 7 BM25 negatives) instead of 16, queries cut to 32 tokens, thoughts to 48
and documents to 64 (title and first sentences; 128-token documents made a step 41 s on 2 cores).
`:gpu` is the full setting for a GPU: groups of 16, 64 / 64 / 256 tokens, 3 epochs.
"""

from o1_jax.defaults import train_config


def get_config(arg: str | None = None):
    c = train_config()
    c.model.init_from = "shipped:smollm2-135m-instruct"
    c.data.train = "train_thoughts.jsonl"
    c.data.max_query_tokens = 32
    c.data.max_thought_tokens = 48
    c.data.max_doc_tokens = 64
    c.data.group_size = 4
    c.data.thought_dropout = 0.1
    c.loss.temperature = 0.02
    c.loss.w_ctr = 0.8
    c.loss.w_gen = 0.2
    c.optimizer.lr = 5e-5
    c.optimizer.warmup_fraction = 0.1
    c.optimizer.decay = "linear"
    c.train.global_batch_size = 16
    c.train.num_epochs = 1
    c.train.log_every = 5
    c.train.checkpoint_every = 20
    if arg == "gpu":
        c.data.max_query_tokens = 64
        c.data.max_thought_tokens = 64
        c.data.max_doc_tokens = 256
        c.data.group_size = 16
        c.train.num_epochs = 3
        c.model.remat_policy = "dots"
    elif arg:
        raise ValueError(f"configs/repro_smollm2.py: unknown variant {arg!r} (expected 'gpu' or nothing)")
    return c
