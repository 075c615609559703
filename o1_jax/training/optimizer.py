"""The learning-rate schedule (linear warmup, then cosine / linear / constant) and AdamW with clipping."""

from __future__ import annotations

import optax

from o1_jax import defaults


def make_schedule(opt, num_steps: int) -> optax.Schedule:
    """`config.optimizer`'s schedule over `num_steps`."""
    warmup = opt.warmup_steps if opt.warmup_steps >= 0 else int(round(opt.warmup_fraction * num_steps))
    decay_steps = max(num_steps - warmup, 1)
    end = opt.lr * opt.end_lr_factor
    if opt.decay == "cosine":
        decay = optax.cosine_decay_schedule(opt.lr, decay_steps, alpha=opt.end_lr_factor)
    elif opt.decay == "linear":
        decay = optax.linear_schedule(opt.lr, end, decay_steps)
    elif opt.decay == "constant":
        decay = optax.constant_schedule(opt.lr)
    else:
        raise ValueError(f"config.optimizer.decay={opt.decay!r}: expected one of {defaults.DECAYS}")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), decay], [warmup])


def make_optimizer(opt, schedule) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(opt.clip_norm) if opt.clip_norm > 0 else optax.identity(),
        optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay),
    )
