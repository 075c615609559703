"""The embedded default: a tiny Llama trained from scratch on the synthetic "who is the friend of X"
task (o1_jax/data/synthetic.py), on a 2-core CPU in 1 to 2.5 minutes, with no network and no shared data.

  python -m o1_jax.train --config configs/demo.py --workdir /tmp/o1_demo
  python -m o1_jax.train --config configs/demo.py:short --workdir /tmp/o1_demo_short   # tests

It ends by evaluating the held-out people (eval.at_end): without thinking the query names only the
asked-about person, whose document is the wrong one; with thinking the model writes the related
person's name, found by the relation rule it learnt, and retrieves the right document.

The thought is what must be learnt, so the generation loss weighs 4.0. With the library default 0.2
the 400 steps do not teach the rule (both modes nDCG@10 0.06); with 2.0 the no-think embedding
learns much of the rule too (seed 1: think 0.91, no-think 0.46); with 4.0 seeds 0, 1 and 2 reach
think 1.00, 0.99, 1.00 and no-think 0.27, 0.27, 0.13. The length limits fit the task's longest query
(11 words), thought (19) and document (14), so no compute goes to padding, and 3-document groups
(the positive, the subject's own document, one more hard negative) keep the step cheap.
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
    c.data.max_query_tokens = 12  # tests/test_synthetic.py checks these cover the task's texts
    c.data.max_thought_tokens = 20
    c.data.max_doc_tokens = 14
    c.data.group_size = 3
    c.loss.temperature = 0.05
    c.loss.w_gen = 4.0
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
