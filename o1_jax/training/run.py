"""The run: everything about a training run that does not depend on the data.

`place_model` gives the model config (from `model.init_from`, a named architecture or
`model.fresh`), the mesh and the parameter shardings (from `sharding.py`): a `PlacedModel`, which
is all a parameters-only restore needs. `build_run` adds the optimizer, the train-state shardings
and the jitted step: a `Run`, shared by training, resuming and the planner (`python -m
o1_jax.plan`), so they compile and place exactly the same thing.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import transformers
from etils import epath

from o1_jax import model_specs, sharding
from o1_jax.checkpoint import Checkpointer
from o1_jax.data import formatting
from o1_jax.data.synthetic import make_tokenizer
from o1_jax.hf import convert
from o1_jax.models import LlamaConfig, LlamaForCausalLM, abstract_params, param_shapes, presets
from o1_jax.models.vocab import resize_vocab
from o1_jax.training import trainable_params
from o1_jax.training.optimizer import make_optimizer, make_schedule
from o1_jax.training.step import make_train_step

INIT_FROM = "config.model.init_from"


def init_path(config) -> pathlib.Path | None:
    """`model.init_from` resolved (o1_jax.model_specs) to an HF folder; None for a fresh model."""
    spec = config.model.init_from
    return model_specs.resolve_hf_folder(spec, INIT_FROM) if spec else None


def load_tokenizer(config, init: pathlib.Path | None):
    """`model.tokenizer` ('synthetic' or a model spec), else the tokenizer of `model.init_from`."""
    spec = config.model.tokenizer
    if spec == "synthetic":
        return make_tokenizer()
    if spec:
        return transformers.AutoTokenizer.from_pretrained(model_specs.resolve(spec, "config.model.tokenizer"))
    if init is None:
        raise ValueError("config.model.tokenizer is empty and config.model.init_from is empty: "
                         "expected a tokenizer folder, 'synthetic', or an HF model to take it from")
    return transformers.AutoTokenizer.from_pretrained(init)


def model_config(config, init: pathlib.Path | None, vocab_size: int) -> LlamaConfig:
    m = config.model
    overrides = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat_policy=m.remat_policy,
                     attention=m.get("attention", "xla"),  # runs before the key existed: the einsum
                     lora_rank=m.lora.rank, lora_alpha=float(m.lora.alpha), lora_targets=tuple(m.lora.targets))
    if init is not None:
        cfg = convert.read_config(init, **overrides)
    elif m.architecture:  # a named architecture trained from scratch (or planned without its weights)
        cfg, _ = presets.preset(m.architecture, **overrides)
    else:
        cfg = LlamaConfig(vocab_size=vocab_size, **m.fresh.to_dict(), **overrides)
    return cfg.replace(vocab_size=max(cfg.vocab_size, vocab_size))


def fingerprint(cfg: LlamaConfig, config) -> dict:
    """What a checkpoint must agree with to be resumed: the model's shapes, its start, seed and batch."""
    model = dataclasses.asdict(cfg)
    for free in ("remat_policy", "scan_layers", "dtype", "attention"):  # how it runs, not what is stored
        model.pop(free)
    return {"model": model, "init_from": config.model.init_from, "seed": config.seed,
            "global_batch_size": config.train.global_batch_size}


@dataclasses.dataclass
class PlacedModel:
    """A run's model on a mesh, without an optimizer: what restoring its parameters needs.

    `config` is the ml_collections config; `model_cfg` the LlamaConfig it resolves to.
    """

    config: Any
    model_cfg: LlamaConfig
    model: LlamaForCausalLM
    tokenizer: Any
    special_ids: list[int]
    original_vocab: int  # the tokenizer's size before the O1 special tokens were added
    init_path: pathlib.Path | None
    mesh: Any
    rules: tuple
    full_shardings: Any  # the full parameter tree's
    trainable_shardings: Any  # of trainable_params.split's trainable view
    frozen_shardings: Any  # of its frozen view ({} without LoRA)

    @property
    def replicated(self):
        return sharding.replicated(self.mesh)

    @property
    def batch_sharding(self):
        return sharding.batch_sharding(self.mesh)

    def _abstract_views(self):
        return jax.eval_shape(lambda p: trainable_params.split(p, self.model_cfg, self.special_ids),
                              param_shapes(self.model_cfg))

    def abstract_trainable(self):
        """The trainable view's shapes, dtypes and shardings."""
        return sharding.with_shardings(self._abstract_views()[0], self.trainable_shardings)

    def abstract_frozen(self):
        """The frozen backbone's (under LoRA; else {}) shapes, dtypes and shardings."""
        return sharding.with_shardings(self._abstract_views()[1], self.frozen_shardings)

    def checkpointer(self, workdir: epath.Path, async_save: bool = True) -> Checkpointer:
        t = self.config.train
        return Checkpointer(workdir / "checkpoints", save_every=t.checkpoint_every, keep=t.keep_checkpoints,
                            async_save=async_save, config_fingerprint=fingerprint(self.model_cfg, self.config))

    def initial_params(self):
        """Full parameters before training: `init_from` with the vocabulary grown, or a fresh init."""
        cfg = self.model_cfg
        if self.init_path is None:
            init = jax.jit(lambda r: nn.unbox(self.model.init(r, jnp.zeros((1, 8), jnp.int32))["params"]),
                           out_shardings=self.full_shardings)
            return init(jax.random.key(self.config.seed))
        lora = dict(lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets)
        base_cfg = convert.read_config(self.init_path, dtype=cfg.dtype, param_dtype=cfg.param_dtype, **lora)
        base_shardings = sharding.logical_to_shardings(abstract_params(base_cfg), self.mesh, self.rules)
        _, params = convert.load_pretrained(self.init_path, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                            shardings=base_shardings, lora_seed=self.config.seed, **lora)
        known = min(self.original_vocab, base_cfg.vocab_size)
        resize = jax.jit(lambda p: resize_vocab(p, base_cfg, cfg.vocab_size, self.special_ids, known)[0],
                         out_shardings=self.full_shardings)
        return resize(params)

    def initial_views(self):
        """(trainable, frozen) views of `initial_params`, each on its shardings."""
        split = jax.jit(lambda p: trainable_params.split(p, self.model_cfg, self.special_ids),
                        out_shardings=(self.trainable_shardings, self.frozen_shardings))
        return split(self.initial_params())


@dataclasses.dataclass
class Run(PlacedModel):
    """A `PlacedModel` with its optimizer and train-state shardings: what training and planning compile."""

    tx: optax.GradientTransformation = None
    schedule: optax.Schedule = None
    state_shardings: dict = None  # {params, opt_state, step}
    num_trainable: int = 0

    def abstract_state(self) -> dict:
        """The train state's shapes, dtypes and shardings (for restoring and ahead-of-time compiling)."""
        abstract_train, _ = self._abstract_views()
        state = {"params": abstract_train, "opt_state": jax.eval_shape(self.tx.init, abstract_train),
                 "step": jax.ShapeDtypeStruct((), jnp.int32)}
        return sharding.with_shardings(state, self.state_shardings)

    def jit_train_step(self):
        """The train step, jitted over the mesh: state donated, metrics replicated."""
        step = make_train_step(self.model, self.tx, self.schedule, self.config.loss, self.special_ids,
                               self.config.train.microbatches, self.config.train.get("grad_cache_chunks", 1))
        return jax.jit(step, in_shardings=(self.state_shardings, self.frozen_shardings, self.batch_sharding),
                       out_shardings=(self.state_shardings, self.replicated), donate_argnums=(0,))


def place_model(config, tokenizer, original_vocab: int, devices=None, mesh_shape=None) -> PlacedModel:
    """The model of `config` with `tokenizer` (its O1 special tokens are added here if missing) on
    `mesh_shape` (default: config.mesh.shape) over `devices` (default: all)."""
    init = init_path(config)
    special_ids = sorted(formatting.add_special_tokens(tokenizer).values())
    cfg = model_config(config, init, len(tokenizer))
    return _place(config, cfg, tokenizer, special_ids, original_vocab, init, devices, mesh_shape)


def _place(config, cfg: LlamaConfig, tokenizer, special_ids, original_vocab, init, devices, mesh_shape=None):
    mesh = sharding.make_mesh(tuple(mesh_shape or config.mesh.shape), devices)
    rules = sharding.rules_from_config(config.mesh.rules)
    # The full parameter tree's shardings from its logical axes, then the trainable / frozen views'.
    full_shardings = sharding.logical_to_shardings(abstract_params(cfg), mesh, rules)
    abstract_full = sharding.with_shardings(param_shapes(cfg), full_shardings)
    train, frozen = jax.eval_shape(lambda p: trainable_params.split(p, cfg, special_ids), abstract_full)
    rows = (trainable_params.SPECIAL_ROWS,)
    return PlacedModel(config, cfg, LlamaForCausalLM(cfg), tokenizer, special_ids, original_vocab, init, mesh,
                       rules, full_shardings, sharding.view_shardings(train, full_shardings, mesh, rows),
                       sharding.view_shardings(frozen, full_shardings, mesh, rows))


def _with_optimizer(placed: PlacedModel, num_steps: int) -> Run:
    schedule = make_schedule(placed.config.optimizer, num_steps)
    tx = make_optimizer(placed.config.optimizer, schedule)
    abstract_train = placed.abstract_trainable()
    state_shardings = {"params": placed.trainable_shardings, "step": placed.replicated,
                       "opt_state": sharding.optimizer_shardings(tx, abstract_train, placed.trainable_shardings,
                                                                 placed.mesh)}
    fields = {f.name: getattr(placed, f.name) for f in dataclasses.fields(PlacedModel)}
    return Run(**fields, tx=tx, schedule=schedule, state_shardings=state_shardings,
               num_trainable=trainable_params.count(abstract_train))


def build_run(config, tokenizer, original_vocab: int, num_steps: int, devices=None) -> Run:
    """The run for `config` with `tokenizer`, its schedule spanning `num_steps`."""
    return _with_optimizer(place_model(config, tokenizer, original_vocab, devices), num_steps)


def assemble_run(config, cfg: LlamaConfig, tokenizer, special_ids: list[int], original_vocab: int,
                 init: pathlib.Path | None, num_steps: int, devices=None) -> Run:
    """The run for an explicit model config; `tokenizer` may be None (the planner, which has no weights)."""
    return _with_optimizer(_place(config, cfg, tokenizer, special_ids, original_vocab, init, devices), num_steps)
