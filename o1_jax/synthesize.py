"""`python -m o1_jax.synthesize --config configs/synth_scifact.py --config.input=IN --config.output=OUT`

Adds committee-chosen thoughts to O1 records (resumable: rerun the same command after a kill).
See o1_jax/synthesis/pipeline.py for every key and the output format.
"""

from absl import app, logging
from ml_collections import config_flags

from o1_jax.synthesis import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/synth_*.py[:variant]).",
                                          lock_config=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config configs/synth_scifact.py")
    logging.set_verbosity(logging.WARNING)
    pipeline.run(_CONFIG.value)


if __name__ == "__main__":
    app.run(main)
