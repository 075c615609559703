"""`python -m o1_jax.synthesize --config configs/synth_scifact.py --config.input=IN --config.output=OUT`

Adds committee-chosen thoughts to O1 records (resumable: rerun the same command after a kill).
Every key, its default and its meaning: `synthesis_config()` in o1_jax/defaults.py (each
key is commented there); o1_jax/synthesis/pipeline.py describes the output format. Bad input
stops with one `error:` line and exit code 2.

The expert may be a server (any OpenAI-compatible /v1/chat/completions):

  python -m o1_jax.serve --model shipped:smollm2-135m-instruct --port 8000 &
  python -m o1_jax.synthesize --config configs/synth_scifact.py:served --config.input=IN --config.output=OUT

If the server stays down through the retries (config.expert.max_retries) or refuses a request, the
run stops with one `error:` line naming the records not written; rerun the same command to resume.
"""

import pathlib

from absl import logging
from ml_collections import config_flags

from o1_jax import cli
from o1_jax.synthesis import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/synth_*.py[:variant]); every key is commented in "
    "o1_jax/defaults.py synthesis_config().", lock_config=True)


def main(argv):
    del argv  # cli.run_absl refuses stray arguments
    config = _CONFIG.value
    if config is None:
        cli.fail("--config is required, e.g. --config configs/synth_scifact.py")
    logging.set_verbosity(logging.WARNING)
    pipeline.check_config(config)
    cli.check_output(pathlib.Path(config.output).expanduser(), resumable=True)  # before the expert is loaded
    pipeline.run(config)


if __name__ == "__main__":
    cli.run_absl(main)
