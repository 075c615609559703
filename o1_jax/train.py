"""`python -m o1_jax.train --config configs/demo.py --workdir DIR [--config.optimizer.lr=1e-4 ...]`

Trains (or resumes, if DIR has checkpoints) an O1 embedder.
Every config key, its default and its meaning: `python -m o1_jax.defaults`.
Bad input (a record, a config value, a flag) stops with one `error:` line and exit code 2.
"""

from absl import flags, logging
from ml_collections import config_flags

from o1_jax import cli
from o1_jax.training_job import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, f"Path to a config file (configs/*.py[:variant]); {cli.CONFIG_KEYS_HINT}.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the tokenizer go "
                               "(an existing workdir is resumed).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv  # cli.run_absl refuses stray arguments
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    cli.check_output(_WORKDIR.value, folder=True, resumable=True)  # before any work
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run_absl(main)
