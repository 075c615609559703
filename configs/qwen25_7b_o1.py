"""The original O1 Embedder recipe: Qwen2.5-7B-Instruct, LoRA r=32 / alpha=64 on every projection.

64 queries x group 16 (1 positive + 15 hard negatives) per step with every other query's documents
as negatives, query + thought 256 tokens, passages 192, lr 1e-4, temperature 0.02, loss
0.8 x InfoNCE + 0.2 x thought CE, 10% of queries without their thought. bfloat16 compute;
parameters (the frozen backbone and the adapters) stay float32 so Adam updates the adapters in full
precision. Planned (python -m o1_jax.plan) to fit with the figures in the README:

  python -m o1_jax.plan --config configs/qwen25_7b_o1.py --topology v5p:2x2x1   # 42.7 of 95 GiB
  python -m o1_jax.plan --config configs/qwen25_7b_o1.py:h100x8 --cpu_devices 8 --hbm_gib 80
  python -m o1_jax.plan --config configs/qwen25_7b_o1.py:h100x1 --cpu_devices 1 --hbm_gib 80

  python -m o1_jax.train --config configs/qwen25_7b_o1.py --workdir gs://BUCKET/o1_qwen \\
      --config.model.init_from=/path/to/Qwen2.5-7B-Instruct --config.data.train=o1_train.jsonl

Variants: none (a TPU v5p-8 slice: 4 chips, FSDP over all), "h100x8" (one node of 8 x H100 80 GB),
"h100x1" (ONE 80 GB GPU: the same 64 x 16 batch, every document a negative for every query, by
GradCache in 8 chunks). Planned on 1 CPU device (2026-12-03; the CPU compiler's temporaries, an
estimate; einsum attention, so cuDNN attention on the GPU can only need less): the one-shot step
needs 216.4 GiB, 4 chunks 88.2 GiB (no), 8 chunks 64.6 GiB (29.3 GiB of it the float32 frozen
backbone and the adapters' Adam state; yes, 15.4 GiB free), 16 chunks 52.9 GiB.
"""

from o1_jax.defaults import train_config


def get_config(arg: str | None = None):
    c = train_config()
    c.model.architecture = "qwen2.5-7b"  # for planning; the weights come from init_from
    c.model.init_from = "~/models/Qwen2.5-7B-Instruct"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat_policy = "full"
    c.model.lora.rank = 32
    c.model.lora.alpha = 64.0
    c.model.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    c.data.train = "o1_train.jsonl"
    c.data.max_query_tokens = 64
    c.data.max_thought_tokens = 187  # + 5 special tokens: 256 per query sequence
    c.data.max_doc_tokens = 191  # + <emb>: 192 per passage
    c.data.group_size = 16
    c.data.thought_dropout = 0.1
    c.loss.temperature = 0.02
    c.loss.w_ctr, c.loss.w_gen = 0.8, 0.2
    c.optimizer.lr = 1e-4
    c.optimizer.warmup_fraction = 0.1
    c.optimizer.decay = "linear"
    c.train.global_batch_size = 64
    c.train.num_epochs = 1
    c.train.log_every = 10
    c.train.checkpoint_every = 200
    c.mesh.shape = (1, -1, 1)  # FSDP over every chip
    if arg == "h100x8":
        # One process drives the node's 8 GPUs (launch/gpu/single_node.sh): FSDP over exactly 8.
        # Planned on 8 CPU devices (no GPU compiler here): 31.1 GiB of 80 with full remat; `dots`
        # remat needs 324 GiB by the same estimate, so full remat stays.
        c.mesh.shape = (1, 8, 1)
    elif arg == "h100x1":
        c.mesh.shape = (1, 1, 1)
        c.train.grad_cache_chunks = 8  # 8 queries + 128 documents per chunk's forward and backward
    elif arg:
        raise ValueError(f"configs/qwen25_7b_o1.py: unknown variant {arg!r} (expected 'h100x8', 'h100x1' or nothing)")
    return c
