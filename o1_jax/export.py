"""`python -m o1_jax.export --workdir DIR --out OUT [--step N] [--overwrite] [--max_shard_size 5GB]`

Turns a training workdir's checkpoint (the latest, or `--step`) into one self-contained folder
(DIR may be a URL such as gs://bucket/run; OUT is a local folder):

  * a Hugging Face `LlamaForCausalLM` (LoRA merged) with the O1 tokenizer and a generation config;
  * a sentence-transformers model over the same files that embeds DOCUMENTS;
  * a model card, README.md: training config, evaluation results, special tokens, formats, usage.

The folder is written by o1_jax.hf.o1_folder (which explains both views); this command reads the
workdir and publishes the result. Nothing is half-written: everything is built in a hidden sibling
folder that is renamed to OUT at the end (removed on any error or Ctrl-C, and on SIGTERM under the
command). An OUT that exists and is not empty is replaced only with --overwrite; otherwise the
command stops with exit code 2 and touches nothing.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import sys

import jax
from etils import epath

from o1_jax import cli, defaults, files
from o1_jax.hf import model_card, o1_folder
from o1_jax.training import workdir as workdir_lib

# ----------------------------------------------------------------------------- checks before any work


def check_destination(workdir: str | os.PathLike, out: pathlib.Path, overwrite: bool) -> None:
    """Raises (touching nothing) when `out` may not be written."""
    if not files.is_remote(workdir):  # a local `out` cannot contain a remote workdir
        w, o = pathlib.Path(workdir).resolve(), out.resolve()
        if o == w or o in w.parents:
            raise ValueError(f"{out}: is the workdir {workdir} or contains it; choose another --out")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a folder (expected a new or empty folder for the export)")
        if any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite / overwrite=True to replace it)")


def read_eval_results(workdir: epath.Path) -> list[tuple[str, dict]]:
    """[(file name, results)] from `workdir/eval/*.json` (written by o1_jax.evaluate / eval.at_end)."""
    found = []
    for path in sorted((workdir / "eval").glob("*.json")):
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); expected o1_jax evaluation results") from None
        modes = results.get("modes") if isinstance(results, dict) else None
        if not isinstance(modes, dict) or not all(isinstance(m, dict) for m in modes.values()):
            raise ValueError(f"{path}: no 'modes' mapping of mode -> metrics; expected o1_jax evaluation results")
        found.append((path.name, results))
    return found


def resolve_step(workdir: epath.Path, step: int | None) -> int | None:
    """The step to export: `step`, else the newest finished checkpoint (None when there is none).

    Explicit, so that a corrupted newest step stops the export instead of falling back to an older one
    than the card would name."""
    if step is not None:
        return int(step)
    folder = workdir / workdir_lib.CHECKPOINTS
    steps = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return max(steps, default=None)


def _devices(saved: dict, source: epath.Path):
    """Devices for the run's own mesh: a fixed shape (no -1) takes its first devices; None means all."""
    shape = saved.get("config", {}).get("mesh", {}).get("shape")
    if not shape or -1 in shape:
        return None
    needed, available = int(math.prod(shape)), jax.devices()
    if needed > len(available):
        raise ValueError(f"{source}: mesh.shape {tuple(shape)} needs {needed} devices, this host has "
                         f"{len(available)}; export where the run's mesh fits")
    return available[:needed]


# ----------------------------------------------------------------------------- export


def export(workdir: str | os.PathLike, out: str | os.PathLike, step: int | None = None, overwrite: bool = False,
           max_shard_size: int | str = "5GB") -> pathlib.Path:
    """Writes the HF + sentence-transformers folder `out` from a training workdir's checkpoint; returns `out`.

    Raises FileExistsError (touching nothing) when `out` exists and is not empty and `overwrite` is False.
    """
    workdir, out = epath.Path(workdir), pathlib.Path(out)
    check_destination(workdir, out, overwrite)  # before anything slow
    saved, _, original_vocab = workdir_lib.read_run_config(workdir)
    evals = read_eval_results(workdir)
    restored = workdir_lib.restore_params(workdir, resolve_step(workdir, step),
                                          devices=_devices(saved, workdir / workdir_lib.RUN_CONFIG))
    d, e = restored.config.data, restored.config.get("eval", {})
    run = model_card.RunSummary(workdir=str(workdir), step=restored.step, config=saved["config"],
                                original_vocab=original_vocab, evals=evals)
    with files.staged_folder(out) as staging:
        o1_folder.write_o1_folder(
            staging, restored.model, restored.params, restored.tokenizer,
            max_query_tokens=d.max_query_tokens, max_thought_tokens=d.max_thought_tokens,
            max_doc_tokens=d.max_doc_tokens, run=run, tokenizer_source=str(workdir / workdir_lib.TOKENIZER),
            max_shard_size=max_shard_size, think_temperature=float(e.get("temperature", defaults.THINK_TEMPERATURE)),
            think_top_p=float(e.get("top_p", defaults.THINK_TOP_P)), num_thoughts=int(e.get("num_thoughts", 1)),
            query_instruction=str(d.get("query_instruction", "")))
    return out


# ----------------------------------------------------------------------------- command line


def _parse(argv):
    p = cli.ArgumentParser(prog="python -m o1_jax.export", description=__doc__.split("\n\n")[1])
    p.add_argument("--workdir", required=True, help="the training workdir (python -m o1_jax.train --workdir)")
    p.add_argument("--out", required=True, help="the folder to write (a new or empty folder, or --overwrite)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--max_shard_size", default="5GB", help="largest safetensors file, e.g. 5GB or 500MB")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)

    def stop(signum, frame):  # SIGTERM unwinds like Ctrl-C, so the staging folder is removed
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    return cli.run(_export, args)


def _export(args) -> None:
    cli.check_output(args.out, args.overwrite, folder=True)  # before the checkpoint is read
    out = export(args.workdir, args.out, step=args.step, overwrite=args.overwrite, max_shard_size=args.max_shard_size)
    print(f"exported {args.workdir} to {out}")


if __name__ == "__main__":
    sys.exit(main())
