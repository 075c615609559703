"""Hugging Face <-> o1_jax parameter conversion: `load_pretrained`, `save_pretrained` (`write_pretrained`
into a folder the caller publishes).

Our parameter tree mirrors HF names, so the mapping is a rule, not a table:
the path joined with dots, `kernel` -> `weight` (transposed, HF stores `[out, in]`),
`embedding` -> `weight`, and the scanned `model/layers/...` leaves split into
`model.layers.{i}....` along their leading axis.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from o1_jax.files import atomic_write_json, staged_folder
from o1_jax.hf.safetensors_io import CheckpointReader, TensorSpec, write_checkpoint
from o1_jax.models.config import LlamaConfig
from o1_jax.models.lora import is_lora_path, merge_lora
from o1_jax.models.llama import LlamaForCausalLM, param_shapes

# Tensors HF checkpoints may carry that have no parameter here.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _path_names(path) -> tuple[str, ...]:
    return tuple(getattr(p, "key", getattr(p, "name", p)) for p in path)


def hf_tensor_names(path: tuple[str, ...], num_layers: int) -> list[str]:
    """HF tensor name(s) for one of our leaves: one per layer for scanned leaves."""
    *module, leaf = path
    suffix = {"kernel": "weight", "embedding": "weight", "weight": "weight", "bias": "bias"}[leaf]
    if module[:2] == ["model", "layers"]:
        rest = ".".join(module[2:] + [suffix])
        return [f"model.layers.{i}.{rest}" for i in range(num_layers)]
    return [".".join(module + [suffix])]


def _is_stacked(path: tuple[str, ...]) -> bool:
    return path[:2] == ("model", "layers")


def _to_ours(path: tuple[str, ...], hf_array: np.ndarray) -> np.ndarray:
    return hf_array.T if path[-1] == "kernel" else hf_array


def read_config(folder: str | os.PathLike, **overrides) -> LlamaConfig:
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder (expected a Hugging Face model folder)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (expected a Hugging Face model folder)")
    try:
        hf = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from None
    return LlamaConfig.from_hf_dict(hf, source=str(config_path), **overrides)


def load_pretrained(
    path: str | os.PathLike,
    dtype: str = "float32",
    param_dtype: str | None = None,
    shardings: Any = None,
    lora_seed: int = 0,
    **config_overrides,
) -> tuple[LlamaForCausalLM, dict]:
    """Loads a local HF Llama/Mistral/Qwen2 folder into `(model, params)`.

    `dtype` is the compute dtype (and the parameter dtype unless `param_dtype` is
    given). `shardings`, a pytree of `jax.sharding.Sharding` shaped like the params,
    places every tensor straight onto its devices, each device reading only its
    slice from the memory-mapped file; without it, params go to the default device.
    Host memory holds at most one stacked tensor at a time besides the result.
    `config_overrides` (e.g. `lora_rank=8, lora_targets=("q_proj",)`, `remat_policy="full"`)
    change the model config; LoRA adapters start as in PEFT (a random, b zero).
    """
    folder = pathlib.Path(path)
    cfg = read_config(folder, dtype=dtype, param_dtype=param_dtype or dtype, **config_overrides)
    reader = CheckpointReader(folder)
    abstract = param_shapes(cfg)
    target = np.dtype(cfg.weight_dtype)

    used: set[str] = set()
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    for key_path, leaf in leaves_with_paths:
        path = _path_names(key_path)
        if is_lora_path(path):
            continue
        names = hf_tensor_names(path, cfg.num_hidden_layers)
        per_tensor = leaf.shape[1:] if _is_stacked(path) else leaf.shape
        expected = per_tensor[::-1] if path[-1] == "kernel" else per_tensor
        for name in names:
            if name not in reader:
                raise ValueError(f"{folder}: tensor {name!r} is missing from the safetensors files")
            if reader.shape(name) != tuple(expected):
                raise ValueError(
                    f"{reader.file_of(name)}: tensor {name!r} has shape {reader.shape(name)}, "
                    f"expected {tuple(expected)} from config.json"
                )
        used.update(names)
    extra = [
        k
        for k in reader.keys()
        if k not in used
        and not k.endswith(_IGNORED_SUFFIXES)
        and not (cfg.tie_word_embeddings and k == "lm_head.weight")
    ]
    if extra:
        raise ValueError(
            f"{folder}: {len(extra)} tensor(s) do not belong to a {cfg.model_type} model with this config.json, "
            f"e.g. {extra[:3]}"
        )

    if shardings is not None:
        shardings_flat = treedef.flatten_up_to(shardings)
    else:
        shardings_flat = [None] * len(leaves_with_paths)

    arrays = []
    lora_rng = jax.random.key(lora_seed)
    for (key_path, leaf), sharding in zip(leaves_with_paths, shardings_flat):
        path = _path_names(key_path)
        if is_lora_path(path):  # new adapters: a random, b zero, so the model starts as the base
            lora_rng, sub = jax.random.split(lora_rng)
            batch = (0,) if _is_stacked(path) else ()
            init = nn.initializers.he_uniform(in_axis=-2, out_axis=-1, batch_axis=batch)
            init = init if path[-1] == "lora_a" else nn.initializers.zeros
            value = init(sub, leaf.shape, leaf.dtype)
            arrays.append(jax.device_put(value, sharding) if sharding is not None else value)
            continue
        read = _slice_reader(reader, path, cfg.num_hidden_layers, target)
        if sharding is None:
            arrays.append(jax.device_put(read(tuple(slice(None) for _ in leaf.shape))))
        else:
            arrays.append(jax.make_array_from_callback(leaf.shape, sharding, read))
    return LlamaForCausalLM(cfg), jax.tree_util.tree_unflatten(treedef, arrays)


def _slice_reader(reader: CheckpointReader, path, num_layers: int, dtype: np.dtype) -> Callable:
    """index (tuple of slices over our shape) -> numpy array of that slice, in `dtype`."""
    names = hf_tensor_names(path, num_layers)

    def read(index: tuple[slice, ...]) -> np.ndarray:
        if not _is_stacked(path):
            return np.asarray(_to_ours(path, reader.get(names[0]))[index], dtype=dtype)
        layers = range(num_layers)[index[0]]
        return np.stack([np.asarray(_to_ours(path, reader.get(names[i]))[index[1:]], dtype=dtype) for i in layers])

    return read


def check_params_match(cfg: LlamaConfig, params: dict) -> None:
    """Raises a clear error when `params` is not shaped like the model `cfg` describes."""
    expected = {_path_names(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(param_shapes(cfg))[0]}
    got = {_path_names(p): np.shape(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    for path in sorted(set(expected) | set(got)):
        name = "/".join(path)
        if path not in got:
            raise ValueError(f"params: parameter {name} is missing (the model config expects it)")
        if path not in expected:
            raise ValueError(f"params: parameter {name} is not part of a model with this config")
        if tuple(got[path]) != tuple(expected[path]):
            raise ValueError(f"params: parameter {name} has shape {tuple(got[path])}, expected {expected[path]} from the model config")


def check_finite(cfg: LlamaConfig, params: dict) -> None:
    """Raises naming the first HF tensor that holds a NaN or inf: such a model would only ever output garbage."""
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            continue
        path = _path_names(key_path)
        per_layer = _is_stacked(path)
        ok = np.asarray(jax.device_get(jnp.isfinite(leaf).all(axis=tuple(range(1, leaf.ndim)) if per_layer else None)))
        if not ok.all():
            name = hf_tensor_names(path, cfg.num_hidden_layers)[int(np.argmin(ok.reshape(-1)))]
            raise ValueError(f"params: tensor {name} ({'/'.join(path)}) has non-finite values (NaN or inf), "
                             "so the model is not written")


def hf_tensor_specs(cfg: LlamaConfig, params: dict) -> list[TensorSpec]:
    """What `save_pretrained` writes: HF name, shape, dtype and a producer per tensor."""
    specs: list[TensorSpec] = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = _path_names(key_path)
        names = hf_tensor_names(path, cfg.num_hidden_layers)
        dtype = np.dtype(leaf.dtype)
        per_layer = tuple(leaf.shape[1:] if _is_stacked(path) else leaf.shape)
        shape = per_layer[::-1] if path[-1] == "kernel" else per_layer
        for i, name in enumerate(names):
            if _is_stacked(path):
                produce = (lambda leaf=leaf, i=i, path=path: _to_ours(path, np.asarray(jax.device_get(leaf[i]))))
            else:
                produce = (lambda leaf=leaf, path=path: _to_ours(path, np.asarray(jax.device_get(leaf))))
            specs.append((name, shape, dtype, produce))
    return specs


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    text = size.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def write_pretrained(
    model: LlamaForCausalLM,
    params: dict,
    folder: str | os.PathLike,
    tokenizer=None,
    max_shard_size: int | str = "5GB",
) -> None:
    """Writes an HF model (safetensors, config.json, tokenizer and generation config when given) into
    `folder`, an empty folder the caller publishes (`save_pretrained`, or a larger export).

    LoRA adapters, if the model has them, are merged into the kernels first.
    """
    folder = pathlib.Path(folder)
    check_params_match(model.cfg, params)
    cfg, params = merge_lora(model.cfg, params)  # HF has no adapters: write merged kernels
    check_finite(cfg, params)  # after the merge, which could overflow
    if tokenizer is not None:
        cfg = cfg.replace(
            eos_token_id=cfg.eos_token_id if cfg.eos_token_id is not None else tokenizer.eos_token_id,
            bos_token_id=cfg.bos_token_id if cfg.bos_token_id is not None else tokenizer.bos_token_id,
            pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else tokenizer.pad_token_id,
        )
    hf_config = cfg.to_hf_dict()
    hf_config["dtype"] = str(np.dtype(params["model"]["norm"]["weight"].dtype))

    write_checkpoint(folder, hf_tensor_specs(cfg, params), _parse_size(max_shard_size))
    atomic_write_json(folder / "config.json", hf_config)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
        atomic_write_json(folder / "generation_config.json",
                          {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")})


def save_pretrained(
    model: LlamaForCausalLM,
    params: dict,
    out_dir: str | os.PathLike,
    tokenizer=None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> pathlib.Path:
    """Writes the HF folder `out_dir` (see `write_pretrained`); returns it.

    Everything goes to a hidden sibling folder renamed into place at the end (o1_jax.files), so an
    interrupted save never leaves a half-written model; an existing non-empty `out_dir` is replaced
    only with `overwrite=True`.
    """
    out = pathlib.Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass overwrite=True to replace it)")
    with staged_folder(out) as staging:
        write_pretrained(model, params, staging, tokenizer=tokenizer, max_shard_size=max_shard_size)
    return out
