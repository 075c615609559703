"""Llama-3.1-8B-Instruct, full fine-tuning with the O1 joint loss on a TPU v5p pod slice.

The recipe of configs/qwen25_7b_o1.py (64 queries x group 16, 256 / 192 tokens, temperature 0.02,
0.8 / 0.2 loss weights) without LoRA: every weight is trained, so the float32 weights and Adam's
two moments (12 bytes per parameter, 96 GB in all, plus the gradients during the step) are
sharded over the whole slice (FSDP), with full rematerialisation of each layer. Planned to fit
with the figures in the README: a v5p-16 slice (8 chips) needs 38.9 of 95 GiB per chip; a
v5p-128 (64 chips) 6.4 GiB.

  python -m o1_jax.plan --config configs/llama3_8b_o1.py --topology v5p:2x2x2
  O1_TPU_TYPE=v5p-16 O1_CONFIG=configs/llama3_8b_o1.py launch/tpu/pod.sh --spot up   # launch/README.md
"""

from o1_jax.defaults import train_config


def get_config(arg: str | None = None):
    c = train_config()
    c.model.architecture = "llama3.1-8b"  # for planning; the weights come from init_from
    c.model.init_from = "~/models/Llama-3.1-8B-Instruct"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat_policy = "full"
    c.data.train = "o1_train.jsonl"
    c.data.max_query_tokens = 64
    c.data.max_thought_tokens = 187
    c.data.max_doc_tokens = 191
    c.data.group_size = 16
    c.optimizer.lr = 1e-5  # full fine-tuning: an order below the LoRA rate
    c.optimizer.warmup_fraction = 0.05
    c.optimizer.decay = "cosine"
    c.optimizer.weight_decay = 0.01
    c.train.global_batch_size = 64
    c.train.num_epochs = 1
    c.train.log_every = 10
    c.train.checkpoint_every = 200
    c.mesh.shape = (1, -1, 1)
    c.distributed.initialize = True  # one process per TPU VM host
    if arg:
        raise ValueError(f"configs/llama3_8b_o1.py: unknown variant {arg!r} (expected nothing)")
    return c
