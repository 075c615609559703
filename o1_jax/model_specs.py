"""Model specs: the one resolver for every command and config key that names a model.

    shipped:NAME         a model shipped inside a PyPI package, materialised once by o1_jax.hf.fetch
    package:MOD/sub/dir  a folder inside an installed Python package (e.g. a sentence-transformers model)
    gs://bucket/run      a URL: a training workdir on an object store (kept as an `epath.Path`)
    /a/local/folder      an HF folder, a sentence-transformers folder, an export or a training workdir

What the folder must hold (config.json, run_config.json, ...) is checked by whoever reads it.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

from etils import epath

from o1_jax.files import is_remote
from o1_jax.hf import fetch

PREFIXES = ("shipped:", "package:")


def package_folder(spec: str) -> pathlib.Path:
    """`package:MOD/sub/dir` -> the folder `sub/dir` inside the installed package MOD."""
    name, _, sub = spec[len("package:"):].partition("/")
    found = importlib.util.find_spec(name) if name else None
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"{spec!r}: the Python package {name!r} is not installed")
    return pathlib.Path(list(found.submodule_search_locations)[0]) / sub


def resolve(spec: str | os.PathLike, key: str = "model") -> pathlib.Path | epath.Path:
    """The folder `spec` names (see the module docstring); `key` (a config key or flag) names it in errors.

    A local folder that does not exist is an error here; a URL is checked by its reader.
    """
    text = os.fspath(spec)
    if not text:
        raise ValueError(f"{key} is empty: expected a model folder, a workdir, shipped:NAME or package:MOD/path")
    if text.startswith("shipped:"):
        return fetch.fetch(text.split(":", 1)[1])
    if is_remote(text):
        return epath.Path(text)
    path = package_folder(text) if text.startswith("package:") else pathlib.Path(text).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{key}={text!r}: {path} is not a folder (expected a model folder or a workdir)")
    return path


def resolve_hf_folder(spec: str | os.PathLike, key: str = "model") -> pathlib.Path:
    """`resolve`, for a key that needs a local Hugging Face model folder (with config.json)."""
    path = resolve(spec, key)
    if is_remote(path) or not (path / "config.json").is_file():
        raise FileNotFoundError(f"{key}={os.fspath(spec)!r}: {path} has no config.json (expected a Hugging Face "
                                "model folder, or shipped:smollm2-135m-instruct)")
    return pathlib.Path(path)
