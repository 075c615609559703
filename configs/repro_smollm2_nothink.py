"""The no-think twin of configs/repro_smollm2.py: the same model, data, order, steps and optimiser,
with the generation loss off and every thought dropped, i.e. a plain contrastive embedder on
`<query>{q}</query><thought><emb>` (the form O1 models embed without thinking).

  python -m o1_jax.train --config configs/repro_smollm2_nothink.py --workdir /tmp/repro/nothink \\
      --config.data.train=/tmp/repro/train_thoughts.jsonl

max_thought_tokens is 1 only so no compute goes to thought padding: no thought is ever fed.
"""

import importlib.util
import pathlib


def _joint_config(arg):
    """configs/repro_smollm2.py's config, loaded from beside this file (whatever the working directory)."""
    spec = importlib.util.spec_from_file_location("repro_smollm2", pathlib.Path(__file__).with_name("repro_smollm2.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg: str | None = None):
    c = _joint_config(arg)
    c.data.thought_dropout = 1.0
    c.data.max_thought_tokens = 1
    c.loss.w_gen = 0.0
    return c
