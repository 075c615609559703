"""Float32 rounding bounds, so that a test's tolerance says where it comes from.

A float32 sum of n terms, in any order, is within n * u * sum|x_i| of the exact sum, u = eps/2
(Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 4.2). Two float32
evaluations of one sum in different orders (another device count, another sharding, another XLA
kernel) are therefore within n * eps * sum|x_i| of each other. These bounds are worst cases; random
rounding errors usually come out about sqrt(n) times smaller, so a test on them cannot fail by
reduction order, and anything a bug changes by more than a few parts in 1e4 still fails it.
"""

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23 ~ 1.19e-7
U32 = EPS32 / 2  # unit roundoff: one float32 rounding's relative error


def reorder_atol(n: float, abs_sum: float) -> float:
    """|a - b| bound for two float32 evaluations, in different orders, of one n-term sum with sum|x_i| = abs_sum."""
    return n * EPS32 * abs_sum


def exact_atol(n: float, abs_sum: float) -> float:
    """|float32 sum - exact sum| bound for an n-term sum with sum|x_i| = abs_sum (any order)."""
    return n * U32 * abs_sum


def contrastive_loss_atol(b: int, n_docs: int, dim: int, temperature: float, loss: float, *, reorder: bool) -> float:
    """Bound on the InfoNCE value of unit vectors: against the exact value, or (reorder=True) across layouts.

    Each logit is a dim-term dot product of unit vectors divided by t (<= dim/t roundings of size 1/t,
    plus the division), it enters lse and the positive's logit (x2); each lse sums n_docs exps (+exp,
    log roundings); the mean over b queries adds b*|loss|. In units of u, or eps when reordered.
    """
    k = 2 * (dim + 1) / temperature + n_docs + 2 + (b + 2) * abs(loss)
    return k * (EPS32 if reorder else U32)
