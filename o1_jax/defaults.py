"""Default values of every config key; each file in configs/ starts from these and changes a few.

Keeping the defaults in the package (not in configs/) lets a config file live anywhere
and still be complete; the config is locked, so a misspelt override is an error.
"""

from __future__ import annotations

import ml_collections

from o1_jax.sharding import DEFAULT_RULES


def train_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.init_from = ""  # HF folder, "shipped:smollm2-135m-instruct", or "" for a fresh model
    c.model.tokenizer = ""  # tokenizer folder or "synthetic"; "" = the init_from folder's
    # A named architecture (o1_jax.models.presets) for a fresh model, or to plan without the weights.
    c.model.architecture = ""
    c.model.dtype = "float32"  # compute dtype
    c.model.param_dtype = "float32"
    c.model.remat_policy = "none"  # none | full | dots | dots_no_batch
    c.model.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=()))  # rank 0: full fine-tuning
    # Architecture of a fresh model (used only when init_from is empty); vocab comes from the tokenizer.
    c.model.fresh = ml_collections.ConfigDict(dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0))

    c.data = ml_collections.ConfigDict()
    c.data.train = ""  # O1 JSONL records
    c.data.synthetic = False  # the embedded demo task instead of data.train
    c.data.synthetic_train = 4000
    c.data.synthetic_test = 200
    # array_record conversion, always local: "" = <workdir>/data_cache, or for a gs:// workdir
    # ~/.cache/o1_jax/data/<hash of its URL>
    c.data.cache_dir = ""
    c.data.num_shards = 1
    c.data.max_query_tokens = 32
    c.data.max_thought_tokens = 128
    c.data.max_doc_tokens = 192
    c.data.group_size = 16  # 1 positive + 15 hard negatives
    c.data.thought_dropout = 0.1

    c.loss = ml_collections.ConfigDict(dict(
        temperature=0.02, w_ctr=0.8, w_gen=0.2, w_distill=0.0, teacher_temperature=1.0))

    c.optimizer = ml_collections.ConfigDict(dict(
        lr=1e-4, warmup_steps=-1, warmup_fraction=0.1, decay="linear", end_lr_factor=0.0,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=1.0))

    c.train = ml_collections.ConfigDict(dict(
        global_batch_size=64, microbatches=1, num_steps=0, num_epochs=1,  # num_steps 0: run num_epochs
        log_every=10, checkpoint_every=500, keep_checkpoints=3))

    # Evaluation after the last step, on a BEIR folder ("" = the synthetic task's held-out split).
    c.eval = ml_collections.ConfigDict(dict(at_end=False, beir="", split="test", num_thoughts=1, max_queries=0))

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (1, -1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
    c.mesh.rules = tuple(DEFAULT_RULES)

    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False, coordinator_address="", num_processes=1, process_id=0, local_device_count=0))
    return c
