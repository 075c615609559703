"""What a training run folder (a workdir: local, or a URL such as gs://bucket/run) holds, and
how its parameters are read back for serving, export and evaluation.

    run_config.json   {"config": the run's config, "original_vocab": the tokenizer's size before
                      the O1 special tokens}; written once a resume has been accepted
    tokenizer/        the tokenizer with the special tokens (a remote one ends in commit_success.txt)
    checkpoints/      orbax steps (o1_jax.checkpoint): params, opt_state, step, and the data position
    metrics.jsonl, tensorboard/, eval/   what the run logged and measured

`restore_params` reads only the parameters of a step: the optimizer state (Adam's two moments,
twice the trainable parameters) is neither read nor allocated. The format is unchanged since the
first release, so workdirs written before this module load as they did.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import transformers
from etils import epath

from o1_jax import files, sharding
from o1_jax.files import atomic_write_json
from o1_jax.models import LlamaForCausalLM
from o1_jax.training import trainable_params
from o1_jax.training.run import PlacedModel, place_model

RUN_CONFIG = "run_config.json"
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
EXPECTED = "expected the workdir of a `python -m o1_jax.train` run"


def is_workdir(path: str | os.PathLike) -> bool:
    """A URL (only training writes workdirs there) or a local folder with run_config.json."""
    return files.is_remote(path) or (epath.Path(path) / RUN_CONFIG).is_file()


def write_run_config(workdir: epath.Path, config, original_vocab: int) -> None:
    atomic_write_json(workdir / RUN_CONFIG, {"config": config.to_dict(), "original_vocab": original_vocab})


def read_run_config(workdir: str | os.PathLike) -> tuple[dict, ml_collections.ConfigDict, int]:
    """(the file's JSON, the run's config, original_vocab), checking the workdir has what a run writes."""
    workdir = epath.Path(workdir)
    for needed in (RUN_CONFIG, TOKENIZER, CHECKPOINTS):
        if not (workdir / needed).exists():
            raise FileNotFoundError(f"{workdir}: no {needed} ({EXPECTED})")
    path = workdir / RUN_CONFIG
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); {EXPECTED}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict) or "original_vocab" not in saved:
        raise ValueError(f"{path}: expected an object with 'config' and 'original_vocab' ({EXPECTED})")
    return saved, ml_collections.ConfigDict(saved["config"]), int(saved["original_vocab"])


def save_tokenizer(tokenizer, workdir: epath.Path) -> None:
    """`save_pretrained` into workdir/tokenizer, never leaving a half folder that `load_tokenizer` would read."""
    files.publish_folder(workdir / TOKENIZER, tokenizer.save_pretrained)


def load_tokenizer(workdir: str | os.PathLike):
    with files.local_copy(epath.Path(workdir) / TOKENIZER) as folder:
        return transformers.AutoTokenizer.from_pretrained(os.fspath(folder))


@dataclasses.dataclass
class Restored:
    model: LlamaForCausalLM
    params: Any  # the full parameter tree (LoRA adapters unmerged), on `placed.full_shardings` or `shardings`
    tokenizer: Any
    config: ml_collections.ConfigDict  # the run's config
    step: int
    placed: PlacedModel


def restore_params(workdir: str | os.PathLike, step: int | None = None, devices=None, mesh_shape=(1, -1, 1),
                   shardings: jax.sharding.Sharding | None = None) -> Restored:
    """The parameters of a run's latest intact (or given) checkpoint, without its optimizer state.

    They are placed FSDP over `devices` (`mesh_shape`, default all devices), whatever mesh the run
    trained on, or, with `shardings`, every array on that one sharding (e.g. replicated for serving).
    Under LoRA the frozen backbone, which is not checkpointed, is rebuilt from `model.init_from`.
    """
    workdir = epath.Path(workdir)
    _, config, original_vocab = read_run_config(workdir)
    tokenizer = load_tokenizer(workdir)
    placed = place_model(config, tokenizer, original_vocab, devices, mesh_shape)
    abstract = placed.abstract_trainable()
    if shardings is not None:
        abstract = sharding.with_shardings(abstract, jax.tree.map(lambda _: shardings, abstract))
    ckpt = placed.checkpointer(workdir, async_save=False)
    try:
        if not ckpt.all_steps():
            raise FileNotFoundError(f"{workdir / CHECKPOINTS}: no finished checkpoint to restore")
        step, state, _ = ckpt.restore_step(step, {"params": abstract}, partial=True)
    finally:
        ckpt.close()
    frozen = placed.initial_views()[1] if placed.model_cfg.lora_rank else {}
    if shardings is not None and frozen:
        frozen = jax.device_put(frozen, shardings)
    params = trainable_params.combine(state["params"], frozen, placed.special_ids)
    return Restored(placed.model, params, tokenizer, config, step, placed)
