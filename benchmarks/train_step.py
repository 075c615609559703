"""One O1 training step on SmolLM2-135M: o1_jax (`make_train_step`, jax.jit) vs PyTorch, same run.

The step is the whole O1 update: the query forward (`<query>q</query><thought>t<eos><emb>`,
LM head only at the thought positions, thought cross-entropy), the documents forward
(`{passage}<emb>`, last position), InfoNCE over the batch (temperature 0.02), loss
0.8 x InfoNCE + 0.2 x CE, backward, global-norm clipping at 1.0 and AdamW, full fine-tuning
in float32. The reference writes the same loss in PyTorch on `transformers`'
`LlamaForCausalLM` (`model.model(...)` for the final hidden states, `lm_head` only at the
gathered positions) with `torch.optim.AdamW` and `clip_grad_norm_`.

The batch is built once (real tokenizer, the O1 special tokens added, fixed shapes, left
padding) from SciFact train queries (positive: the qrels document; negatives: random
corpus documents; thought: a stand-in, the positive's abstract cut to the thought budget)
when `--data` holds SciFact, else from synthetic sentences. Both sides get the same ids,
masks and positions (cumsum(mask) - 1), and both grow the embedding by the four special
tokens with the new rows set to the mean of the original rows. Their first-step losses
must agree, so we know they compute the same thing.

Each side runs in its own subprocess, so its peak RSS (`ru_maxrss` of that process:
imports, weights, optimizer state, activations and, for o1_jax, compilation) is its own.
The parent drives both processes one step at a time and (`--schedule interleaved`, the
default when memory allows both to stay resident) alternates them in ABBA order, so on a
shared machine both sides see the same background load; `--schedule sequential` runs all
of one side, then all of the other.
Only one side computes at any moment. Times are the median (and minimum) over `--steps`
timed steps after `--warmup` untimed ones (o1_jax compiles in the first); tokens/s counts
real tokens (the sum of the query and document masks).

    python benchmarks/train_step.py [--batch 4 --group 4 --max_query 32 --max_thought 64 \
        --max_doc 128 --steps 6 --warmup 2 --schedule auto --json out.json]

`--grad_cache_chunks 2,4` adds one o1_jax side per value, the same step with GradCache
(`train.grad_cache_chunks`) in that many chunks: its time and peak RSS against the one-shot
o1_jax side, and its first-step loss, which must agree with the one-shot one.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from machine import (  # benchmarks/machine.py, next to this file
    current_rss_gib,
    describe_machine,
    machine,
    peak_rss_gib,
    write_json,
)

MODEL = "smollm2-135m-instruct"
LOSS_RTOL = 1e-4
DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"
OPT = {"lr": 1e-4, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "clip_norm": 1.0}  # constant lr
LOSS = {"temperature": 0.02, "w_ctr": 0.8, "w_gen": 0.2}
# Interleaving keeps both processes resident (about 8 + 6.5 GiB at the default sizes; each
# GradCache side adds about as much again).
INTERLEAVE_GIB = 16


# ----------------------------------------------------------------------------- helpers


def positions(mask: np.ndarray) -> np.ndarray:
    """As o1_jax's `default_positions`: a left-padded row gets the positions of its unpadded self."""
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int64)


# ----------------------------------------------------------------------------- the batch


def _records(data: pathlib.Path, num: int, num_neg: int, seed: int) -> tuple[list[dict], str]:
    rng = np.random.default_rng(seed)
    if (data / "corpus.jsonl").is_file() and (data / "queries.jsonl").is_file() and (data / "qrels" / "train.tsv").is_file():
        queries = {}
        with open(data / "queries.jsonl") as f:
            for line in f:
                q = json.loads(line)
                queries[q["_id"]] = q["text"]
        corpus = {}
        with open(data / "corpus.jsonl") as f:
            for line in f:
                d = json.loads(line)
                corpus[d["_id"]] = {"title": d.get("title", ""), "text": d.get("text", "")}
        pairs = []
        with open(data / "qrels" / "train.tsv") as f:
            next(f)
            for line in f:
                qid, did, score = line.rstrip("\n").split("\t")
                if int(score) > 0 and qid in queries and did in corpus:
                    pairs.append((qid, did))
        doc_ids = sorted(corpus)
        records = []
        for i in rng.choice(len(pairs), size=num, replace=False):
            qid, did = pairs[int(i)]
            negs = [corpus[doc_ids[int(j)]] for j in rng.choice(len(doc_ids), size=num_neg, replace=False)]
            pos = corpus[did]
            # Stand-in thought: expert thoughts are passage-like answers; the formatter cuts it to the budget.
            records.append({"id": qid, "query": queries[qid], "pos": [pos], "neg": negs, "thought": pos["text"]})
        return records, f"SciFact train ({data})"
    from o1_jax.data.synthetic import make_records

    pool = make_records(num * (num_neg + 1) * 8, seed, num_negatives=num_neg)
    sentences = [p["text"] for r in pool for p in r["pos"] + r["neg"]]

    def long_text(k: int) -> str:  # several synthetic passages, long enough to fill the budgets
        return " ".join(sentences[(k * 12 + j) % len(sentences)] for j in range(12))

    records = []
    for i, r in enumerate(pool[:num]):
        docs = [{"title": "", "text": long_text(i * (num_neg + 1) + j)} for j in range(num_neg + 1)]
        records.append({"id": r["id"], "query": r["query"], "pos": docs[:1], "neg": docs[1:],
                        "thought": r["thought"] + " " + long_text(1000 + i)})
    return records, "synthetic sentences (o1_jax.data.synthetic)"


def build_batch(args, path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict]:
    import transformers

    from o1_jax.data import formatting

    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    original_len = len(tokenizer)
    special = formatting.add_special_tokens(tokenizer)
    formatter = formatting.Formatter(tokenizer, args.max_query, args.max_thought, args.max_doc)
    records, source = _records(pathlib.Path(args.data), args.batch, args.group - 1, args.seed)
    rng = np.random.default_rng(args.seed)
    examples = [formatting.build_example(r, rng, args.group, thought_dropout=0.0) for r in records]
    batch = formatter.collate_train(examples)
    meta = {"source": source, "original_len": original_len, "new_vocab": len(tokenizer),
            "special_ids": sorted(special.values())}
    return batch, meta


# ----------------------------------------------------------------------------- o1_jax side


def setup_jax(batch_np: dict, meta: dict, num_steps: int, grad_cache_chunks: int = 1):
    """(one_step, version): one_step runs a jitted `make_train_step` update and returns its metrics."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from o1_jax import hf
    from o1_jax.hf import fetch
    from o1_jax.models import LlamaForCausalLM
    from o1_jax.models.vocab import resize_vocab
    from o1_jax.training.optimizer import make_optimizer, make_schedule
    from o1_jax.training.step import make_train_step

    model, params = hf.load_pretrained(fetch.fetch(MODEL), dtype="float32")
    known = min(meta["original_len"], model.cfg.vocab_size)
    new_vocab = max(meta["new_vocab"], model.cfg.vocab_size)
    params, cfg = resize_vocab(params, model.cfg, new_vocab, meta["special_ids"], known)
    model = LlamaForCausalLM(cfg)

    opt = ml_collections.ConfigDict(dict(OPT, warmup_steps=0, warmup_fraction=0.0, decay="constant", end_lr_factor=1.0))
    schedule = make_schedule(opt, num_steps)
    tx = make_optimizer(opt, schedule)
    loss_cfg = ml_collections.ConfigDict(dict(LOSS, w_distill=0.0, teacher_temperature=1.0))
    step_fn = jax.jit(
        make_train_step(model, tx, schedule, loss_cfg, meta["special_ids"], microbatches=1,
                        grad_cache_chunks=grad_cache_chunks),
        donate_argnums=(0,),  # as training does: the old state's buffers are reused
    )
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    jax.block_until_ready((state, batch))

    def one_step() -> dict:
        nonlocal state
        state, metrics = step_fn(state, {}, batch)
        jax.block_until_ready(state)
        return {k: float(metrics[k]) for k in ("loss", "ctr_loss", "gen_loss", "grad_norm")}

    return one_step, f"jax {jax.__version__} ({jax.default_backend()})"


# ----------------------------------------------------------------------------- PyTorch side


def setup_torch(batch_np: dict, meta: dict, num_steps: int, threads: int = 0):
    """(one_step, version): the same loss and update written in PyTorch on transformers' Llama."""
    import torch
    import torch.nn.functional as F
    import transformers

    from o1_jax.hf import fetch

    if threads:
        torch.set_num_threads(threads)

    model = transformers.LlamaForCausalLM.from_pretrained(fetch.fetch(MODEL), dtype=torch.float32)
    known = min(meta["original_len"], model.config.vocab_size)
    new_vocab = max(meta["new_vocab"], model.config.vocab_size)
    model.resize_token_embeddings(new_vocab, mean_resizing=False)
    with torch.no_grad():  # as trainable.resize_vocab: new rows = mean of the original rows
        weights = (model.get_input_embeddings().weight, model.get_output_embeddings().weight)
        for weight in {id(w): w for w in weights}.values():  # tied: one tensor
            weight[meta["special_ids"]] = weight[:known].mean(0)
    # HF builds embed_tokens with padding_idx = pad_token_id, which zeroes that row's gradient; SmolLM2's
    # pad is its eos, a real token of every O1 query (`...<eos><emb>`), and o1_jax trains it: so does this.
    model.get_input_embeddings().padding_idx = None
    model.train()

    t = {k: torch.from_numpy(np.asarray(v)) for k, v in batch_np.items()}
    q_ids, q_mask = t["query_ids"].long(), t["query_mask"].long()
    d_ids, d_mask = t["doc_ids"].long(), t["doc_mask"].long()
    q_pos = torch.from_numpy(positions(batch_np["query_mask"]))
    d_pos = torch.from_numpy(positions(batch_np["doc_mask"]))
    gen_pos, gen_tgt, gen_w = t["gen_positions"].long(), t["gen_targets"].long(), t["gen_weights"].float()
    b, g = q_ids.shape[0], d_ids.shape[0] // q_ids.shape[0]
    labels = torch.arange(b) * g  # the positive of query i is document i*G

    optimizer = torch.optim.AdamW(model.parameters(), lr=OPT["lr"], betas=(OPT["b1"], OPT["b2"]), eps=OPT["eps"],
                                  weight_decay=OPT["weight_decay"])

    def l2n(x):
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def one_step() -> dict:
        optimizer.zero_grad(set_to_none=True)
        h = model.model(input_ids=q_ids, attention_mask=q_mask, position_ids=q_pos, use_cache=False).last_hidden_state
        q = l2n(h[:, -1])  # [B, D]
        picked = torch.gather(h, 1, gen_pos[..., None].expand(-1, -1, h.shape[-1]))  # [B, Kg, D]
        logits = model.lm_head(picked).float()  # [B, Kg, V]
        ce = F.cross_entropy(logits.flatten(0, 1), gen_tgt.flatten(), reduction="none").view_as(gen_w)
        gen = (ce * gen_w).sum() / gen_w.sum().clamp_min(1.0)
        hd = model.model(input_ids=d_ids, attention_mask=d_mask, position_ids=d_pos, use_cache=False).last_hidden_state
        d = l2n(hd[:, -1])  # [B*G, D]
        ctr = F.cross_entropy(q @ d.T / LOSS["temperature"], labels)
        loss = LOSS["w_ctr"] * ctr + LOSS["w_gen"] * gen
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), OPT["clip_norm"])
        optimizer.step()
        return {"loss": loss.item(), "ctr_loss": ctr.item(), "gen_loss": gen.item(), "grad_norm": grad_norm.item()}

    version = (f"torch {torch.__version__} (threads {torch.get_num_threads()}, attention "
               f"{model.config._attn_implementation}, AdamW foreach={optimizer.defaults.get('foreach')}), "
               f"transformers {transformers.__version__}")
    return one_step, version


# ----------------------------------------------------------------------------- one side's process


def child(args) -> None:
    """Loads one side, reports ready, then runs a step per `step` line on stdin, answering on stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the protocol
    sys.stdout = sys.stderr

    def send(obj):
        proto.write(json.dumps(obj) + "\n")

    batch = dict(np.load(args.batch_file))
    with open(args.meta_file) as f:
        meta = json.load(f)
    rss_imports = current_rss_gib()
    if args.side.startswith("jax"):
        one_step, version = setup_jax(batch, meta, args.warmup + args.steps, chunks_of(args.side))
    else:
        one_step, version = setup_torch(batch, meta, args.warmup + args.steps, args.torch_threads)
    send({"event": "ready", "rss_before_setup_gib": rss_imports, "rss_ready_gib": current_rss_gib()})
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            start = time.perf_counter()
            metrics = one_step()
            send({"s": time.perf_counter() - start, "metrics": metrics, "rss_gib": current_rss_gib()})
        elif command == "finish":
            send({"peak_rss_gib": peak_rss_gib(), "version": version})
            return


# ----------------------------------------------------------------------------- driver


def chunks_of(side: str) -> int:
    """'jax' -> 1, 'jax_gc4' -> 4."""
    return int(side.removeprefix("jax_gc")) if side.startswith("jax_gc") else 1


class Side:
    """The parent's handle on one side's process."""

    def __init__(self, side: str, args, batch_file: str, meta_file: str):
        self.side = side
        cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--batch_file", batch_file,
               "--meta_file", meta_file, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--torch_threads", str(args.torch_threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.steps: list[dict] = []
        self.info: dict = {}

    def receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise SystemExit(f"the {self.side} side exited (code {code}) before answering; its output is above")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.receive()

    def step(self) -> None:
        load = os.getloadavg()[0]
        self.steps.append(dict(self.ask("step"), load_1min=load))

    def finish(self) -> None:
        self.info.update(self.ask("finish"))
        self.proc.wait()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="queries per step")
    parser.add_argument("--group", type=int, default=4, help="documents per query (1 positive + negatives)")
    parser.add_argument("--max_query", type=int, default=32, help="query token budget")
    parser.add_argument("--max_thought", type=int, default=64, help="thought token budget")
    parser.add_argument("--max_doc", type=int, default=128, help="document token budget")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (o1_jax compiles in the first)")
    parser.add_argument("--schedule", choices=["auto", "interleaved", "sequential"], default="auto",
                        help="alternate the sides step by step (ABBA; both processes stay resident), run one "
                             f"side after the other, or auto: interleaved when {INTERLEAVE_GIB} GiB are available")
    parser.add_argument("--torch_threads", type=int, default=0, help="torch intra-op threads; 0: torch's default")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BEIR SciFact folder; synthetic text if absent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grad_cache_chunks", default="", help="comma-separated chunk counts: one more o1_jax "
                        "side per value, with GradCache in that many chunks (each must divide --batch)")
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    # Internal: this process is one side, driven by the parent.
    parser.add_argument("--side", help=argparse.SUPPRESS)  # jax, torch or jax_gcN
    parser.add_argument("--batch_file", help=argparse.SUPPRESS)
    parser.add_argument("--meta_file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1 (o1_jax compiles during warm-up)")
    if args.batch < 1 or args.group < 2:
        parser.error("--batch must be at least 1 and --group at least 2 (a positive and a negative)")
    try:
        args.grad_cache_chunks = [int(c) for c in args.grad_cache_chunks.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--grad_cache_chunks {args.grad_cache_chunks!r}: expected comma-separated counts, e.g. 2,4")
    if any(c < 2 or args.batch % c for c in args.grad_cache_chunks):
        parser.error(f"--grad_cache_chunks {args.grad_cache_chunks}: each count must be >= 2 and divide "
                     f"--batch {args.batch}")
    return args


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def drive(args, batch_file: str, meta_file: str) -> dict[str, Side]:
    names = ["jax", "torch", *(f"jax_gc{c}" for c in args.grad_cache_chunks)]
    rounds = args.warmup + args.steps
    if args.schedule == "sequential":
        sides = {}
        for name in names:
            side = sides[name] = Side(name, args, batch_file, meta_file)
            side.info.update(side.receive())
            for _ in range(rounds):
                side.step()
            side.finish()
        return sides
    sides = {name: Side(name, args, batch_file, meta_file) for name in names}
    try:
        for side in sides.values():
            side.info.update(side.receive())
        for r in range(rounds):  # ABBA (ABC CBA ...): each side goes first as often as last
            for name in (names if r % 4 in (0, 3) else names[::-1]):
                sides[name].step()
        for side in sides.values():
            side.finish()
    finally:
        for side in sides.values():
            if side.proc.poll() is None:
                side.proc.kill()
    return sides


def main() -> None:
    args = parse_args()
    if args.side:
        child(args)
        return
    from o1_jax.hf import fetch

    batch, meta = build_batch(args, fetch.fetch(MODEL))
    real_tokens = int(batch["query_mask"].sum() + batch["doc_mask"].sum())
    padded_tokens = int(batch["query_mask"].size + batch["doc_mask"].size)
    if args.schedule == "auto":
        resident = INTERLEAVE_GIB * (2 + len(args.grad_cache_chunks)) / 2  # every side's process at once
        args.schedule = "interleaved" if available_gib() >= resident else "sequential"
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="o1_train_step.") as workdir:
        batch_file, meta_file = os.path.join(workdir, "batch.npz"), os.path.join(workdir, "meta.json")
        np.savez(batch_file, **batch)
        with open(meta_file, "w") as f:
            json.dump(meta, f)
        sides = drive(args, batch_file, meta_file)
    load_end = os.getloadavg()

    results = {}
    for name, side in sides.items():
        timed = side.steps[args.warmup:]
        times = [s["s"] for s in timed]
        med = statistics.median(times)
        results[name] = {
            "version": side.info["version"],
            "median_s": med,
            "min_s": min(times),
            "max_s": max(times),
            "real_tokens_per_s": real_tokens / med,
            "first_step_s": side.steps[0]["s"],
            "times_s": times,
            "load_1min_at_timed_steps": [s["load_1min"] for s in timed],
            "first_step": side.steps[0]["metrics"],
            "last_loss": side.steps[-1]["metrics"]["loss"],
            "rss_before_setup_gib": side.info["rss_before_setup_gib"],
            "rss_ready_gib": side.info["rss_ready_gib"],
            "rss_between_steps_gib": side.steps[-1]["rss_gib"],
            "peak_rss_gib": side.info["peak_rss_gib"],
        }
    j, t = results["jax"], results["torch"]
    rel = {k: abs(j["first_step"][k] - t["first_step"][k]) / max(abs(t["first_step"][k]), 1e-12)
           for k in ("loss", "ctr_loss", "gen_loss", "grad_norm")}
    agree = rel["loss"] <= LOSS_RTOL
    speedup = t["median_s"] / j["median_s"]

    b, tq = batch["query_ids"].shape
    n, td = batch["doc_ids"].shape
    print(describe_machine())
    print(f"1-min load average: {load_start[0]:.2f} at start, {load_end[0]:.2f} at end "
          f"(other processes share these cores; timings are sensitive to them)")
    print(f"o1_jax: {j['version']}\ntorch:  {t['version']}")
    print(f"model: {MODEL} float32, full fine-tuning, AdamW + global-norm clip {OPT['clip_norm']}; loss "
          f"{LOSS['w_ctr']} x InfoNCE (t={LOSS['temperature']}) + {LOSS['w_gen']} x thought CE")
    print(f"batch ({meta['source']}): {b} queries x {tq} tokens + {n} documents (group {n // b}) x {td} tokens "
          f"= {real_tokens} real tokens of {padded_tokens}; {int(batch['gen_weights'].sum())} thought targets")
    print(f"schedule: {args.schedule}; median of {args.steps} timed steps per side after {args.warmup} warm-up; "
          "peak RSS = ru_maxrss of each side's own process")
    print()
    print("| side | s/step median | s/step min | real tokens/s | first step s | RSS ready GiB | peak RSS GiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    labels = {"jax": "o1_jax", "torch": "torch", **{f"jax_gc{c}": f"o1_jax GradCache {c} chunks"
                                                     for c in args.grad_cache_chunks}}
    for name, label in labels.items():
        r = results[name]
        print(f"| {label} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['real_tokens_per_s']:,.0f} | "
              f"{r['first_step_s']:.2f} | {r['rss_ready_gib']:.2f} | {r['peak_rss_gib']:.2f} |")
    print(f"| torch / o1_jax | {speedup:.2f}x | {t['min_s'] / j['min_s']:.2f}x | | | | "
          f"{t['peak_rss_gib'] / j['peak_rss_gib']:.2f}x |")
    grad_cache = {}
    for c in args.grad_cache_chunks:
        g = results[f"jax_gc{c}"]
        grad_cache[c] = {"time_over_one_shot": g["median_s"] / j["median_s"],
                         "peak_rss_over_one_shot": g["peak_rss_gib"] / j["peak_rss_gib"],
                         "first_step_loss_rel_diff": abs(g["first_step"]["loss"] - j["first_step"]["loss"])
                         / abs(j["first_step"]["loss"])}
        print(f"| GradCache {c} / o1_jax | {grad_cache[c]['time_over_one_shot']:.2f}x | "
              f"{g['min_s'] / j['min_s']:.2f}x | | | | {grad_cache[c]['peak_rss_over_one_shot']:.2f}x |")
    print()
    for c, r in grad_cache.items():
        print(f"GradCache {c} chunks: first-step loss {results[f'jax_gc{c}']['first_step']['loss']:.6f} "
              f"(relative difference to one-shot o1_jax {r['first_step_loss_rel_diff']:.1e})")
    for k, diff in rel.items():
        print(f"first step {k}: o1_jax {j['first_step'][k]:.6f}, torch {t['first_step'][k]:.6f} "
              f"(relative difference {diff:.1e})")
    print(f"first-step losses {'agree' if agree else 'DISAGREE'} at {LOSS_RTOL:g}; loss after "
          f"{args.warmup + args.steps} steps: o1_jax {j['last_loss']:.6f}, torch {t['last_loss']:.6f}")

    if args.json:
        out = {
            "args": {k: v for k, v in vars(args).items() if k not in ("side", "batch_file", "meta_file")},
            "machine": machine(),
            "load_average_1min": {"start": load_start[0], "end": load_end[0]},
            "batch": {"source": meta["source"], "query_shape": [b, tq], "doc_shape": [n, td],
                      "real_tokens": real_tokens, "padded_tokens": padded_tokens},
            "results": results,
            "speedup_torch_over_o1_jax": speedup,
            "first_step_relative_differences": rel,
            "losses_agree": agree,
            "grad_cache": grad_cache,
        }
        write_json(args.json, out)
    if any(r["first_step_loss_rel_diff"] > LOSS_RTOL for r in grad_cache.values()):
        raise SystemExit(f"a GradCache side's first-step loss differs from the one-shot step's by more than {LOSS_RTOL:g}")
    if not agree:
        raise SystemExit(f"o1_jax and torch first-step losses differ by {rel['loss']:.1e} (relative), "
                         f"more than {LOSS_RTOL:g}")


if __name__ == "__main__":
    main()
