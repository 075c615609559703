"""SmolLM2-135M-Instruct on SciFact train records (BM25 hard negatives from o1_jax.data.prepare).

  python -m o1_jax.data.prepare --beir ../shared/data/scifact --split train --negatives 15 \\
      --out scifact_train.jsonl
  python -m o1_jax.train --config configs/smollm2_scifact.py --workdir /tmp/o1_scifact \\
      --config.data.train=scifact_train.jsonl
"""

from o1_jax.defaults import train_config


def get_config(arg: str | None = None):
    c = train_config()
    c.model.init_from = "shipped:smollm2-135m-instruct"
    c.data.train = "scifact_train.jsonl"
    c.data.max_query_tokens = 64
    c.data.max_thought_tokens = 128
    c.data.max_doc_tokens = 192
    c.data.group_size = 8
    c.optimizer.lr = 2e-5
    c.train.global_batch_size = 16
    c.train.num_epochs = 1
    c.train.log_every = 5
    c.train.checkpoint_every = 50
    if arg == "lora":
        c.model.lora.rank = 32
        c.model.lora.alpha = 64.0
        c.model.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        c.optimizer.lr = 1e-4
    elif arg:
        raise ValueError(f"configs/smollm2_scifact.py: unknown variant {arg!r} (expected 'lora' or nothing)")
    return c
