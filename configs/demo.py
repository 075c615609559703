"""The embedded default: a tiny Llama trained from scratch on the synthetic "who is the friend of X"
task, on a 2-core CPU in a few minutes, with no network and no shared data.

  python -m o1_jax.train --config configs/demo.py --workdir /tmp/o1_demo
  python -m o1_jax.train --config configs/demo.py:short --workdir /tmp/o1_demo_short   # tests
"""

from o1_jax.defaults import train_config


def get_config(arg: str | None = None):
    c = train_config()
    c.model.tokenizer = "synthetic"
    c.model.fresh.hidden_size = 128
    c.model.fresh.intermediate_size = 256
    c.model.fresh.num_hidden_layers = 4
    c.model.fresh.num_attention_heads = 4
    c.model.fresh.num_key_value_heads = 2
    c.data.synthetic = True
    c.data.synthetic_train = 6000
    c.data.max_query_tokens = 16
    c.data.max_thought_tokens = 24
    c.data.max_doc_tokens = 16
    c.data.group_size = 4
    c.loss.temperature = 0.05
    c.optimizer.lr = 2e-3
    c.optimizer.warmup_fraction = 0.05
    c.optimizer.decay = "cosine"
    c.optimizer.weight_decay = 0.01
    c.train.global_batch_size = 32
    c.train.num_steps = 400
    c.train.log_every = 20
    c.train.checkpoint_every = 100
    c.eval.at_end = True  # no-think vs think on the held-out people
    if arg == "short":  # the test-suite variant
        c.data.synthetic_train = 512
        c.model.fresh.num_hidden_layers = 2
        c.train.global_batch_size = 16
        c.train.num_steps = 12
        c.train.log_every = 1
        c.train.checkpoint_every = 4
        c.eval.max_queries = 16
    elif arg:
        raise ValueError(f"configs/demo.py: unknown variant {arg!r} (expected 'short' or nothing)")
    return c
