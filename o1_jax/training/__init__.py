"""Training, in the order data flows:

    optimizer.py         the learning-rate schedule and AdamW
    trainable_params.py  what is trained: everything, or LoRA adapters + the special-token rows
    step.py              the jitted train step (joint loss, gradient accumulation, non-finite skip)
    run.py               the run: model, tokenizer, mesh, optimizer and every sharding (train, plan, restore)
    workdir.py           what a run folder holds, and a parameters-only restore for serving and export
    batches.py           the data cache and the deterministic, resumable batches
    loop.py              `train`: initialise or resume, then step, log and checkpoint
"""
