"""Llama-3.2-1B-Instruct, full fine-tuning in bfloat16 compute on one GPU: the 1B-class setting of
the GPU benchmark (issue: tokens/s and MFU on one H100/H200, target MFU >= 40%).

The O1 recipe's shapes (query + thought 256 tokens, passages 192, group 16, temperature 0.02,
0.8 / 0.2 loss weights) with 16 queries per step. Planned without the GPU (the CPU compiler's
estimate): full remat 45.7 of 80 GiB; `dots_no_batch` 110 GiB and `dots` 139 GiB do not fit.

  python -m o1_jax.plan --config configs/llama32_1b_o1.py --cpu_devices 1 --hbm_gib 80
  python -m o1_jax.train --config configs/llama32_1b_o1.py --workdir /tmp/o1_llama1b \\
      --config.model.init_from=/path/to/Llama-3.2-1B-Instruct --config.data.train=o1_train.jsonl
"""

from o1_jax.defaults import train_config


def get_config(arg: str | None = None):
    c = train_config()
    c.model.architecture = "llama3.2-1b"  # for planning; the weights come from init_from
    c.model.init_from = "~/models/Llama-3.2-1B-Instruct"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat_policy = "full"
    c.data.train = "o1_train.jsonl"
    c.data.max_query_tokens = 64
    c.data.max_thought_tokens = 187
    c.data.max_doc_tokens = 191
    c.data.group_size = 16
    c.optimizer.lr = 2e-5
    c.optimizer.warmup_fraction = 0.05
    c.optimizer.decay = "cosine"
    c.train.global_batch_size = 16
    c.train.num_epochs = 1
    c.train.log_every = 10
    c.train.checkpoint_every = 500
    c.mesh.shape = (1, -1, 1)
    if arg:
        raise ValueError(f"configs/llama32_1b_o1.py: unknown variant {arg!r} (expected nothing)")
    return c
