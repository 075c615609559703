"""Evaluate an O1 embedder on a BEIR folder, without and with thinking.

  python -m o1_jax.evaluate --config configs/eval_beir.py \\
      --config.data.path=../shared/data/scifact --config.model.path=/tmp/o1_scifact

Every key and its default: o1_jax/defaults.py's `eval_config`.
"""

from o1_jax.defaults import eval_config


def get_config(arg: str | None = None):
    c = eval_config()
    if arg:
        raise ValueError(f"configs/eval_beir.py: unknown variant {arg!r}")
    return c
