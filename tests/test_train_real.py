"""Training on real parts: SmolLM2-135M-Instruct on SciFact records, distillation on MS MARCO toy records."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from o1_jax.training import loop
from tests.test_train import ROOT, tiny_config


def test_smollm2_on_scifact_prepared_records(shared_data, smollm2_path, tmp_path):
    records = tmp_path / "scifact_train.jsonl"
    subprocess.run([sys.executable, "-m", "o1_jax.data.prepare", "--beir", str(shared_data / "scifact"),
                    "--split", "train", "--negatives", "3", "--out", str(records)], check=True, cwd=ROOT,
                   capture_output=True)
    sys.path.insert(0, str(ROOT))
    from configs import smollm2_scifact

    config = smollm2_scifact.get_config("lora")
    config.model.init_from = str(smollm2_path)
    config.data.train = str(records)
    # One step of the smallest batch the 8-device mesh takes, short texts: a step of the 135M model is
    # most of this test's time, and a second step would check nothing the tiny-model tests do not.
    config.data.max_query_tokens, config.data.max_thought_tokens, config.data.max_doc_tokens = 12, 4, 16
    config.data.group_size = 2
    config.train.global_batch_size = 8
    config.train.num_steps = 1
    config.train.log_every = 1
    config.train.checkpoint_every = 1
    config.model.lora.rank = 4
    result = loop.train(config, tmp_path / "w")
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 1 and np.isfinite(losses).all()
    assert result.history[0]["gen_tokens"] == 0  # prepared records have no thoughts yet
    assert (tmp_path / "w" / "checkpoints" / "1").is_dir()
    tokenizer_len = len(json.loads((tmp_path / "w" / "tokenizer" / "tokenizer.json").read_text())["added_tokens"])
    assert tokenizer_len >= 4


def test_distillation_and_microbatches_on_msmarco_toy_records(shared_data, smollm2_path, tmp_path):
    records = shared_data / "msmarco_toy_train" / "flagembedding_msmarco.jsonl"
    base = {"data.synthetic": False, "data.train": str(records), "model.tokenizer": str(smollm2_path),
            "data.max_query_tokens": 16, "data.max_thought_tokens": 4, "data.max_doc_tokens": 24,
            "train.global_batch_size": 8, "train.num_steps": 2, "loss.w_distill": 0.5}
    two = jax.devices()[:2]  # 8 queries in 2 micro-batches of 4, split over 2 devices
    result = loop.train(tiny_config(**base), tmp_path / "w", devices=two)
    assert all(np.isfinite(h["distill_loss"]) and h["distill_loss"] > 0 for h in result.history)
    micro = loop.train(tiny_config(**base, **{"train.microbatches": 2}), tmp_path / "micro", devices=two)
    assert [h["step"] for h in micro.history] == [1, 2]
    # With two micro-batches each query sees only its own micro-batch's documents: a different loss.
    assert micro.history[0]["ctr_loss"] != pytest.approx(result.history[0]["ctr_loss"], rel=1e-6)
    assert np.isfinite([h["loss"] for h in micro.history]).all()


def test_a_batch_the_mesh_cannot_split_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="global_batch_size=4 .* divisible by the mesh's data x fsdp = 8"):
        loop.train(tiny_config(**{"train.global_batch_size": 4}), tmp_path / "w")
