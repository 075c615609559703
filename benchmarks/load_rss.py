"""Peak memory of loading a trained workdir for serving: parameters only vs the whole train state.

o1_jax's `O1Embedder.from_pretrained(workdir)` restores only the parameters of the latest step
(`training.workdir.restore_params`). The reference is what it did before: build the training run
(mesh + AdamW), restore the whole train state (parameters and both Adam moments), then copy the
parameters onto the embedder's devices. Each is measured in its own fresh process (peak RSS of
that process), and both embed the same query, which must agree, so we know the same thing loaded.

    python benchmarks/load_rss.py [--workdir DIR] [--json out.json]

Without --workdir, a SmolLM2-135M full fine-tune (the reproduction's model and settings, 2 steps
on the synthetic task) is trained into a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

from machine import describe_machine, machine, peak_rss_gib, write_json  # benchmarks/machine.py

QUERY = "what does the friend of puze fofan work as ?"


def train_workdir(workdir: str) -> None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "configs"))
    import repro_smollm2  # configs/repro_smollm2.py

    from o1_jax.training.loop import train

    c = repro_smollm2.get_config()
    c.data.train, c.data.synthetic, c.data.synthetic_train, c.data.synthetic_test = "", True, 64, 8
    c.train.num_steps, c.train.checkpoint_every, c.train.log_every = 2, 2, 1
    c.mesh.shape = (1, 1, 1)
    train(c, workdir)


def load(mode: str, workdir: str) -> dict:
    """In this (fresh) process: load `workdir` the `mode` way, embed QUERY; time, peak RSS, embedding."""
    import jax
    import numpy as np

    from o1_jax.inference.embedder import O1Embedder

    start = time.perf_counter()
    if mode == "params_only":
        emb = O1Embedder.from_pretrained(workdir)
    else:  # the reference: the whole train state through the training run, then a copy
        import flax.linen as nn
        from etils import epath

        from o1_jax.training import run as run_lib, trainable_params, workdir as workdir_lib

        _, config, original_vocab = workdir_lib.read_run_config(workdir)
        config.mesh.shape = (1, -1, 1)
        tokenizer = workdir_lib.load_tokenizer(workdir)
        run = run_lib.build_run(config, tokenizer, original_vocab, num_steps=1)
        with run.checkpointer(epath.Path(workdir), async_save=False) as ckpt, jax.set_mesh(run.mesh), \
                nn.logical_axis_rules(run.rules):
            state, _ = ckpt.restore(None, run.abstract_state())
        params = trainable_params.combine(state["params"], {}, run.special_ids)
        d = config.data
        emb = O1Embedder(run.model, params, tokenizer, max_query_tokens=d.max_query_tokens,
                         max_thought_tokens=d.max_thought_tokens, max_doc_tokens=d.max_doc_tokens)
    jax.block_until_ready(emb.params)
    seconds = time.perf_counter() - start
    vector = emb.encode_queries([QUERY])[0]
    return {"mode": mode, "load_s": seconds, "peak_rss_gib": peak_rss_gib(), "embedding": np.asarray(vector).tolist()}


def measure(mode: str, workdir: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--_load", mode, "--workdir", workdir],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="")
    p.add_argument("--json", default="")
    p.add_argument("--_load", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._load:
        print(json.dumps(load(args._load, args.workdir)))
        return 0
    with tempfile.TemporaryDirectory(prefix="o1_load_rss.") as tmp:
        workdir = args.workdir or f"{tmp}/w"
        if not args.workdir:
            print(f"training a SmolLM2-135M full fine-tune (2 steps) into {workdir} ...", flush=True)
            train_workdir(workdir)
        reference, ours = measure("full_state", workdir), measure("params_only", workdir)
    import numpy as np

    diff = float(np.max(np.abs(np.asarray(reference["embedding"]) - np.asarray(ours["embedding"]))))
    assert diff == 0.0, f"the two loads embed the query differently (max |diff| {diff})"
    print(describe_machine())
    print(f"{'load':<44} {'peak RSS GiB':>12} {'seconds':>8}")
    for name, r in (("reference: whole train state via the training run", reference),
                    ("o1_jax: O1Embedder.from_pretrained (params only)", ours)):
        print(f"{name:<44} {r['peak_rss_gib']:>12.2f} {r['load_s']:>8.1f}")
    print(f"peak RSS saved: {reference['peak_rss_gib'] - ours['peak_rss_gib']:.2f} GiB "
          f"({ours['peak_rss_gib'] / reference['peak_rss_gib']:.0%} of the reference); same query embedding")
    if args.json:
        write_json(args.json, {"machine": machine(), "reference": reference, "o1_jax": ours})
    return 0


if __name__ == "__main__":
    sys.exit(main())
