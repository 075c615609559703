"""Default values of every config key (training, evaluation, and synthesis beside them); each file
in configs/ starts from these and changes a few.

Keeping the defaults in the package (not in configs/) lets a config file live anywhere
and still be complete; the config is locked, so a misspelt override is an error.
`MEANINGS` says what each key means (a test keeps it complete), `check_config` stops a value
that cannot work before any work, and `python -m o1_jax.defaults` lists every key, its default
and its meaning.
"""

from __future__ import annotations

import sys

import ml_collections

from o1_jax.models.config import ATTENTION_IMPLEMENTATIONS, DTYPES, LORA_TARGETS, REMAT_POLICIES
from o1_jax.sharding import DEFAULT_RULES

BATCHES = ("homogeneous", "mixed")  # data.batches with several sources (o1_jax/data/mixture.py)
DECAYS = ("cosine", "linear", "constant")  # optimizer.decay (o1_jax.training.optimizer.make_schedule)
# Sampling of k > 1 thoughts at inference (the original's); one thought is greedy.
THINK_TEMPERATURE = 0.1
THINK_TOP_P = 0.9


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
    c.model.attention = "auto"  # xla | dot_product | splash | auto (o1_jax/models/attention.py)
    c.model.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=()))  # rank 0: full fine-tuning
    # Architecture of a fresh model (used only when init_from is empty); vocab comes from the tokenizer.
    c.model.fresh = ml_collections.ConfigDict(dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0))

    c.data = ml_collections.ConfigDict()
    # O1 JSONL records: one file, or a list of sources (o1_jax/data/mixture.py). Typed `object` so
    # that a config file may set either.
    c.data.train = ml_collections.FieldReference("", field_type=object)
    c.data.batches = "homogeneous"  # a list of sources: each step from one source | mixed
    c.data.query_instruction = ""  # prepended to every query (E5's "query: ", BGE's instruction)
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
        global_batch_size=64, microbatches=1, grad_cache_chunks=1, num_steps=0, num_epochs=1,  # num_steps 0: run num_epochs
        log_every=10, checkpoint_every=500, keep_checkpoints=3,
        # Consecutive steps with a non-finite loss or gradient norm that are skipped (no update)
        # before training stops; 0 stops at the first. See training/loop.py's _FiniteGuard.
        max_nonfinite_steps=0))

    # Evaluation after the last step, on a BEIR folder ("" = the synthetic task's held-out split).
    # temperature / top_p: the sampling of k > 1 thoughts, also what O1Embedder.from_pretrained(workdir) uses.
    c.eval = ml_collections.ConfigDict(dict(at_end=False, beir="", split="test", num_thoughts=1, max_queries=0,
                                            temperature=THINK_TEMPERATURE, top_p=THINK_TOP_P))

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (1, -1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
    c.mesh.rules = tuple(DEFAULT_RULES)

    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False, coordinator_address="", num_processes=1, process_id=0, local_device_count=0))
    return c


# What each key of `train_config()` means; tests/test_cli.py checks that every key has one.
MEANINGS = {
    "seed": "seed of the initialisation, the batch order and thought dropout",
    "model.init_from": "HF folder or shipped:NAME to start from; '' = a fresh model (model.fresh)",
    "model.tokenizer": "tokenizer folder or 'synthetic'; '' = the init_from folder's",
    "model.architecture": "named architecture (o1_jax.models.presets) for a fresh model or a plan without weights",
    "model.dtype": f"compute dtype: one of {tuple(DTYPES)}",
    "model.param_dtype": f"parameter dtype: one of {tuple(DTYPES)}",
    "model.remat_policy": f"activation rematerialisation of each layer: one of {REMAT_POLICIES}",
    "model.attention": "attention kernel: xla (einsum), dot_product (jax.nn, cuDNN on GPU), splash (Pallas, TPU), auto (dot_product on GPU, else xla)",
    "model.lora.rank": "LoRA rank; 0 = full fine-tuning",
    "model.lora.alpha": "LoRA scale numerator (the update is scaled by alpha / rank)",
    "model.lora.targets": f"modules LoRA adapts, from {LORA_TARGETS} (needed when lora.rank > 0)",
    "model.fresh.hidden_size": "fresh model: hidden size",
    "model.fresh.intermediate_size": "fresh model: MLP width",
    "model.fresh.num_hidden_layers": "fresh model: decoder layers",
    "model.fresh.num_attention_heads": "fresh model: query heads",
    "model.fresh.num_key_value_heads": "fresh model: key/value heads (grouped-query attention)",
    "model.fresh.max_position_embeddings": "fresh model: longest sequence",
    "model.fresh.tie_word_embeddings": "fresh model: lm_head shares the embedding matrix",
    "model.fresh.rope_theta": "fresh model: RoPE base",
    "data.train": "O1 JSONL records to train on (python -m o1_jax.data.prepare / o1_jax.synthesize), or a list "
                  "of sources {path, name, weight, group_size, thought_dropout, in_batch_negatives, instruction}",
    "data.batches": "with several sources: 'homogeneous' (each step's queries from one source) or 'mixed'",
    "data.query_instruction": "text prepended to every query in training and at inference ('' = none)",
    "data.synthetic": "train on the embedded synthetic demo task instead of data.train",
    "data.synthetic_train": "synthetic task: training records",
    "data.synthetic_test": "synthetic task: held-out queries",
    "data.cache_dir": "local array_record cache; '' = <workdir>/data_cache (a gs:// workdir: ~/.cache/o1_jax/data)",
    "data.num_shards": "array_record shards of the cache",
    "data.max_query_tokens": "longest query in tokens (longer ones are cut)",
    "data.max_thought_tokens": "longest thought in tokens",
    "data.max_doc_tokens": "longest document in tokens",
    "data.group_size": "documents per query in a batch: 1 positive + group_size - 1 hard negatives (>= 2)",
    "data.thought_dropout": "probability a query is trained without its thought, in [0, 1]",
    "loss.temperature": "contrastive (InfoNCE) temperature, > 0",
    "loss.w_ctr": "weight of the contrastive loss, >= 0",
    "loss.w_gen": "weight of the thought generation loss, >= 0",
    "loss.w_distill": "weight of the distillation loss from pos_scores / neg_scores, >= 0",
    "loss.teacher_temperature": "temperature of the teacher scores in distillation, > 0",
    "optimizer.lr": "peak learning rate, > 0",
    "optimizer.warmup_steps": "linear warmup steps; -1 = warmup_fraction of the run",
    "optimizer.warmup_fraction": "warmup as a fraction of the run, in [0, 1] (when warmup_steps is -1)",
    "optimizer.decay": f"learning-rate decay after warmup: one of {DECAYS}",
    "optimizer.end_lr_factor": "final learning rate as a fraction of lr, >= 0",
    "optimizer.b1": "AdamW beta1, in [0, 1)",
    "optimizer.b2": "AdamW beta2, in [0, 1)",
    "optimizer.eps": "AdamW epsilon, > 0",
    "optimizer.weight_decay": "AdamW decoupled weight decay, >= 0",
    "optimizer.clip_norm": "global gradient-norm clip; 0 = no clipping",
    "train.global_batch_size": "queries per step over all devices, >= 1",
    "train.microbatches": "gradient-accumulation micro-batches per step (divides global_batch_size); "
                          "each micro-batch's InfoNCE sees only its own documents",
    "train.grad_cache_chunks": "GradCache: the step runs in this many chunks of the batch with the one-shot step's "
                               "loss and gradients, every document a negative for every query (1 = off)",
    "train.num_steps": "steps to run; 0 = num_epochs over the data",
    "train.num_epochs": "epochs to run when num_steps is 0",
    "train.log_every": "steps between metric logs",
    "train.checkpoint_every": "steps between checkpoints",
    "train.keep_checkpoints": "checkpoints kept",
    "train.max_nonfinite_steps": "consecutive non-finite steps skipped before stopping; 0 = stop at the first",
    "eval.at_end": "evaluate retrieval after the last step",
    "eval.beir": "BEIR folder to evaluate on; '' = the synthetic task's held-out split",
    "eval.split": "qrels split of eval.beir",
    "eval.num_thoughts": "thoughts per query in think mode",
    "eval.max_queries": "evaluate on at most this many queries; 0 = all",
    "eval.temperature": "sampling temperature of k > 1 thoughts (one thought is greedy); also the run's default when served",
    "eval.top_p": "top-p of k > 1 sampled thoughts; also the run's default when served",
    "mesh.shape": "(data, fsdp, tensor) mesh sizes; -1 takes the remaining devices",
    "mesh.rules": "logical axis -> mesh axis table (o1_jax.sharding.DEFAULT_RULES)",
    "distributed.initialize": "call jax.distributed.initialize (multi-process runs)",
    "distributed.coordinator_address": "host:port of process 0; '' = from the environment",
    "distributed.num_processes": "processes in the run",
    "distributed.process_id": "this process's index",
    "distributed.local_device_count": "devices of this process (local_device_ids 0..N-1); 0 = all it sees",
}


def eval_config() -> ml_collections.ConfigDict:
    """Every key of `python -m o1_jax.evaluate` (configs/eval_beir.py starts from these)."""
    c = ml_collections.ConfigDict()
    # kind: o1 (path: a training workdir or HF folder), dense (path: a sentence-transformers folder or
    # package:NAME/sub/folder; exact search) or bm25 (bm25s, no path). Baselines need c.output.
    c.model = ml_collections.ConfigDict(dict(kind="o1", path="", dtype="float32"))
    c.data = ml_collections.ConfigDict(dict(path="", split="test"))  # BEIR folder
    # o1 only; also "think:K" (K thoughts), "placebo_query" (the query as its own thought),
    # "thoughts:FILE" (each query's thought from an O1 JSONL file, by id) and "shuffled:FILE" (another
    # query's thought from that file): o1_jax.retrieval.beir_eval.parse_mode
    c.modes = ("no_think", "think")
    c.num_thoughts = 3  # k thoughts per query in "think" mode (the original used 3)
    # Sampling of k > 1 thoughts; None: the model's own (its run's eval.temperature / eval.top_p,
    # for an HF folder THINK_TEMPERATURE / THINK_TOP_P).
    c.temperature = None
    c.top_p = None
    # Prepended to every query (E5's "query: ", a BGE instruction); None: the model's own (its run's
    # data.query_instruction, an export's o1_embedder.json), "" for none.
    c.query_instruction = None
    c.compare_scann = False  # also search a ScaNN index; report its metrics and top-10 recall vs exact
    # Token limits (0: the model's own, from its training config; an HF folder: 64 / 128 / 256).
    c.max_query_tokens = 0
    c.max_thought_tokens = 0
    c.max_doc_tokens = 0
    c.aggregate = "mean_normalized"  # or "mean", as the original
    c.top_k = 1000
    c.ignore_identical_ids = True  # drop a retrieved document whose id is the query's (BEIR's default)
    c.index_mode = "auto"  # exact below 20k documents, ScaNN above
    c.max_queries = 0  # 0 = all judged queries
    c.batch_size = 0  # 0 = the embedder's default
    c.seed = 0
    c.cache_dir = ""  # corpus encodings; "" = <model path>/eval/cache
    c.output = ""  # "" = <model path>/eval/<folder>-<split>.json
    return c


def synthesis_config() -> ml_collections.ConfigDict:
    """Every key of `python -m o1_jax.synthesize` (configs/synth_*.py start from these)."""
    c = ml_collections.ConfigDict()
    c.input = ""  # O1 JSONL records (o1_jax.data.prepare)
    c.output = ""  # JSONL, appended to and resumed
    c.seed = 0
    c.num_candidates = 3
    c.limit = 0  # only the first `limit` input records (0: all)
    c.chunk_size = 64  # records per propose / score / write round
    c.progress = True
    c.expert = ml_collections.ConfigDict(dict(
        # local: o1_jax generation on `model`; openai: chat requests to an OpenAI-compatible server
        # (python -m o1_jax.serve, vLLM, ...) at base_url, `model` then being the served model's name.
        kind="local",
        model="shipped:smollm2-135m-instruct",  # an HF folder or shipped:NAME (o1_jax.hf.fetch); or the served name
        base_url="http://127.0.0.1:8000/v1",  # kind openai: the server's API root
        api_key_env="O1_JAX_API_KEY",  # kind openai: the environment variable holding its key (unset: none sent)
        max_concurrency=8,  # kind openai: requests in flight
        timeout=600.0,  # kind openai: seconds one request may take
        max_retries=8,  # kind openai: retries of a connection error, timeout, 408, 429 or 5xx; then the run stops
        backoff=1.0,  # kind openai: seconds before the first retry, doubling (at most 60)
        dtype="float32",
        batch_size=48,  # generated rows per compiled batch (batch_size // n prompts when they are shared)
        fresh_examples=True,  # a prompt with its own examples per candidate (the original's rounds), so candidates differ
        max_new_tokens=128,
        temperature=0.7,
        top_p=0.9,
        bucket=64,  # prompt widths are rounded up to a multiple of this
        num_examples=3,  # few-shot examples per prompt, from other records
        example_max_words=64,  # each example passage is cut to this many words (0: whole)
    ))
    # Degenerate candidates (empty, too short, loops, the query again, chat meta-text: o1_jax/synthesis/
    # degenerate.py) cannot win the vote; a record with nothing else keeps no thought.
    c.filter = ml_collections.ConfigDict(dict(enabled=True, min_words=5))
    c.committee = ml_collections.ConfigDict()
    c.committee.rule = "soft"  # soft | hard
    # Extra negatives the committee scores candidates against: BM25's top bm25_top documents of a BEIR
    # corpus.jsonl for each query (not its positives); 0 = only the record's own negatives.
    c.committee.pool = ml_collections.ConfigDict(dict(corpus="", bm25_top=0))
    c.committee.members = ml_collections.ConfigDict()
    c.committee.members.bm25 = ml_collections.ConfigDict(dict(kind="bm25", weight=1.0, path=""))
    return c


def leaves(config: ml_collections.ConfigDict, prefix: str = ""):
    """(dotted key, value) of every leaf of `config`, in definition order."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first key whose value cannot work (before any work is done)."""
    def bad(key, expected):
        node = config
        for part in key.split("."):
            node = node[part]
        raise ValueError(f"config.{key}={node!r}: expected {expected}")

    m, d, loss, opt, t, e = config.model, config.data, config.loss, config.optimizer, config.train, config.eval
    for key, value in (("model.dtype", m.dtype), ("model.param_dtype", m.param_dtype)):
        if value not in DTYPES:
            bad(key, f"one of {tuple(DTYPES)}")
    if m.remat_policy not in REMAT_POLICIES:
        bad("model.remat_policy", f"one of {REMAT_POLICIES}")
    if m.attention not in ATTENTION_IMPLEMENTATIONS:
        bad("model.attention", f"one of {ATTENTION_IMPLEMENTATIONS}")
    if m.lora.rank < 0:
        bad("model.lora.rank", "0 (full fine-tuning) or a positive rank")
    if m.lora.rank and m.lora.alpha <= 0:
        bad("model.lora.alpha", "a positive number")
    for key in ("max_query_tokens", "max_thought_tokens", "max_doc_tokens", "num_shards"):
        if d[key] < 1:
            bad(f"data.{key}", "a positive count (>= 1)")
    if d.group_size < 2:
        bad("data.group_size", "at least 2 (1 positive + at least 1 negative)")
    if not 0.0 <= d.thought_dropout <= 1.0:
        bad("data.thought_dropout", "a probability in [0, 1]")
    if d.batches not in BATCHES:
        bad("data.batches", f"one of {BATCHES}")
    if not isinstance(d.query_instruction, str):
        bad("data.query_instruction", "a string ('' for none)")
    if d.synthetic and (d.synthetic_train < 1 or d.synthetic_test < 0):
        bad("data.synthetic_train" if d.synthetic_train < 1 else "data.synthetic_test", "a positive count")
    for key in ("temperature", "teacher_temperature"):
        if not loss[key] > 0:
            bad(f"loss.{key}", "a positive number (> 0)")
    for key in ("w_ctr", "w_gen", "w_distill"):
        if loss[key] < 0:
            bad(f"loss.{key}", "a weight >= 0")
    if loss.w_ctr + loss.w_gen + loss.w_distill <= 0:
        bad("loss.w_ctr", "at least one of loss.w_ctr, w_gen, w_distill above 0 (else nothing is trained)")
    if not opt.lr > 0:
        bad("optimizer.lr", "a positive learning rate (> 0)")
    if opt.decay not in DECAYS:
        bad("optimizer.decay", f"one of {DECAYS}")
    if opt.warmup_steps < -1:
        bad("optimizer.warmup_steps", "-1 (use warmup_fraction) or a count >= 0")
    if not 0.0 <= opt.warmup_fraction <= 1.0:
        bad("optimizer.warmup_fraction", "a fraction in [0, 1]")
    for key in ("b1", "b2"):
        if not 0.0 <= opt[key] < 1.0:
            bad(f"optimizer.{key}", "a number in [0, 1)")
    if not opt.eps > 0:
        bad("optimizer.eps", "a positive number (> 0)")
    for key in ("end_lr_factor", "weight_decay", "clip_norm"):
        if opt[key] < 0:
            bad(f"optimizer.{key}", "a number >= 0")
    for key in ("global_batch_size", "microbatches", "grad_cache_chunks", "log_every", "checkpoint_every", "keep_checkpoints"):
        if t[key] < 1:
            bad(f"train.{key}", "a positive count (>= 1)")
    if t.max_nonfinite_steps < 0:
        bad("train.max_nonfinite_steps", "a count >= 0 (0 = stop at the first non-finite step)")
    if t.num_steps < 0:
        bad("train.num_steps", "0 (run train.num_epochs) or a positive count")
    if t.num_steps == 0 and t.num_epochs < 1:
        bad("train.num_epochs", "a positive count when train.num_steps is 0")
    for key in ("num_thoughts", "max_queries"):
        if e[key] < 0:
            bad(f"eval.{key}", "a count >= 0")
    if e.temperature < 0:
        bad("eval.temperature", "a number >= 0 (0 = greedy)")
    if not 0.0 < e.top_p <= 1.0:
        bad("eval.top_p", "a probability in (0, 1]")
    shape = tuple(config.mesh.shape)
    if len(shape) != 3 or any(n == 0 or n < -1 for n in shape) or shape.count(-1) > 1:
        bad("mesh.shape", "three sizes (data, fsdp, tensor), each positive or one of them -1")


def main(argv: list[str] | None = None) -> int:
    """Prints every training config key with its default and meaning."""
    del argv
    rows = [(key, repr(value), MEANINGS.get(key, "")) for key, value in leaves(train_config())]
    width = max(len(k) for k, _, _ in rows)
    print("Training config keys (python -m o1_jax.train / o1_jax.plan; override with --config.KEY=VALUE):")
    for key, value, meaning in rows:
        if len(value) > 40:
            value = value[:37] + "..."
        print(f"  {key:<{width}}  {value:<20}  {meaning}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
