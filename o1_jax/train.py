"""`python -m o1_jax.train --config configs/demo.py --workdir DIR [--config.optimizer.lr=1e-4 ...]`

Trains (or resumes, if DIR has checkpoints) an O1 embedder. See o1_jax/defaults.py for every key.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from o1_jax import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the tokenizer go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    trainer.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
