"""The command-line contract every command keeps (o1_jax/cli.py).

Bad input is one `error: <sentence>` line on stderr and exit code 2 (no traceback); `--help` exits
0; one flag spelling (underscores); an existing output is refused before any work unless
`--overwrite`, and an output folder that cannot be written is found before any work.

The absl commands (train, evaluate, synthesize) each define `--config`, so they cannot share this
process: each runs its cases in one subprocess (`_probe`), through its own `__main__` entry.
"""

import importlib
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from o1_jax import cli, defaults, export, hf, index
from o1_jax.data import prepare, synthetic
from o1_jax.hf import fetch
from o1_jax.inference.embedder import O1Embedder
from o1_jax.models import LlamaConfig, LlamaForCausalLM, init_params
from o1_jax.retrieval.vector_index import Index

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs `python -m module ARGV...` for each ARGV in one process (the module's own `__main__` entry,
# through runpy) and prints [[exit code or "raised", stdout, stderr], ...] as JSON.
_PROBE = r"""
import contextlib, io, json, runpy, sys, traceback
from absl.flags import FLAGS
name, cases = sys.argv[1], json.loads(sys.argv[2])
results = []
for argv in cases:
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [name] + argv  # ml_collections finds the --config.key overrides in sys.argv
    for flag in [f for f in FLAGS if f.startswith("config.")]:  # it defines them anew at each parse
        delattr(FLAGS, flag)
    FLAGS.unparse_flags()  # each case starts from the defaults
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(name, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = "raised"
    results.append([code, out.getvalue(), err.getvalue()])
sys.__stdout__.write("\nPROBE " + json.dumps(results) + "\n")
"""


def _probe(module: str, cases: list[list[str]]) -> list[tuple]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, module, json.dumps(cases)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert line is not None, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(line[len("PROBE "):])]


def _one_error_line(code, stderr: str, *words: str) -> str:
    """Asserts exit 2 and a single `error:` line holding `words`; returns that line."""
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], stderr[-3000:]
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


def _main_error(main, argv, capsys, *words) -> str:
    """An argparse command's `main(argv)` in this process: one error line and 2, by return or by exit."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return _one_error_line(code, capsys.readouterr().err, *words)


# ----------------------------------------------------------------------------- train


def test_train_reports_bad_input_as_one_sentence(tmp_path):
    data = {
        "malformed.jsonl": b'{"query": "q", "pos": ["d"]}\n{"query": "q2", "pos": [\n',
        "no_pos.jsonl": b'{"query": "q", "neg": ["d"]}\n',
        "empty_query.jsonl": b'{"query": "  ", "pos": ["d"]}\n',
        "latin1.jsonl": '{"query": "caf\u00e9", "pos": ["d"]}\n'.encode("latin-1"),
        "empty.jsonl": b"",
    }
    for name, raw in data.items():
        (tmp_path / name).write_bytes(raw)
    (tmp_path / "file").write_text("x")
    base = ["--config", "configs/demo.py:short", "--config.data.synthetic=False"]

    def case(workdir, *extra):
        return [*base, f"--workdir={tmp_path / workdir}", *extra]

    cases = {  # name -> (argv, words the error line must hold)
        "malformed": (case("w1", f"--config.data.train={tmp_path / 'malformed.jsonl'}"),
                      ["malformed.jsonl:2: malformed JSON"]),
        "no_pos": (case("w2", f"--config.data.train={tmp_path / 'no_pos.jsonl'}"),
                   ["no_pos.jsonl:1: 'pos' must be a non-empty list"]),
        "empty_query": (case("w3", f"--config.data.train={tmp_path / 'empty_query.jsonl'}"),
                        ["empty_query.jsonl:1: 'query' must be a non-empty string"]),
        "latin1": (case("w4", f"--config.data.train={tmp_path / 'latin1.jsonl'}"), ["latin1.jsonl:1: not valid UTF-8"]),
        "empty": (case("w5", f"--config.data.train={tmp_path / 'empty.jsonl'}"), ["empty.jsonl: no records"]),
        "missing": (case("w6", f"--config.data.train={tmp_path / 'nowhere.jsonl'}"), ["nowhere.jsonl: no such file"]),
        "misspelt_key": (case("w7", "--config.train.global_batch_sizee=4"),
                         ["--config.train.global_batch_sizee", "no key 'global_batch_sizee'", "'global_batch_size'"]),
        "wrong_type": (case("w8", "--config.train.global_batch_size=abc"),
                       ["--config.train.global_batch_size=abc", "invalid literal for int()"]),
        "no_config_file": (["--config", "configs/nowhere.py", f"--workdir={tmp_path / 'w9'}"],
                           ["--config: cannot read the config file", "configs/nowhere.py"]),
        "bad_variant": (["--config", "configs/demo.py:nope", f"--workdir={tmp_path / 'w10'}"],
                        ["unknown variant 'nope'"]),
        "temperature": (case("w11", "--config.data.synthetic=True", "--config.loss.temperature=0"),
                        ["config.loss.temperature=0.0: expected a positive number"]),
        "workdir_under_a_file": (["--config", "configs/demo.py:short", f"--workdir={tmp_path / 'file' / 'w'}"],
                                 [f"{tmp_path / 'file' / 'w'}: cannot be written", "is a file, not a folder"]),
        "stray_argument": (case("w12", "extra"), ["unexpected arguments ['extra']"]),
        "unknown_flag": (case("w13", "--workdirr=x"), ["workdirr"]),
    }
    results = _probe("o1_jax.train", [argv for argv, _ in cases.values()] + [["--help"]])
    for (name, (_, words)), (code, _, stderr) in zip(cases.items(), results):
        _one_error_line(code, stderr, *words)
    for workdir in ("w7", "w8", "w9", "w10", "w11", "w12", "w13"):  # refused before the workdir was made
        assert not (tmp_path / workdir).exists(), workdir
    code, stdout, _ = results[-1]
    assert code == 0 and "python -m o1_jax.defaults" in stdout and "--workdir" in stdout


# ----------------------------------------------------------------------------- evaluate, synthesize


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> pathlib.Path:
    return synthetic.write_demo_data(tmp_path_factory.mktemp("cli") / "demo", seed=0, num_train=4, num_test=6)


def test_evaluate_output_rule_and_bad_folders(beir, tmp_path):
    (tmp_path / "file").write_text("x")
    done = tmp_path / "done.json"
    done.write_text('{"earlier": true}\n')
    replaced = tmp_path / "replaced.json"
    replaced.write_text('{"earlier": true}\n')
    base = ["--config", "configs/eval_beir.py", "--config.model.kind=bm25", f"--config.data.path={beir}"]
    cases = [
        [*base, f"--config.output={done}"],
        [*base, f"--config.output={tmp_path / 'file' / 'r.json'}"],
        [*base, "--config.data.split=dev", f"--config.output={tmp_path / 'dev.json'}"],
        [*base, f"--config.output={replaced}", "--overwrite"],
        ["--help"],
    ]
    exists, under_file, no_qrels, overwrite, help_ = _probe("o1_jax.evaluate", cases)
    _one_error_line(exists[0], exists[2], f"{done}: already exists; pass --overwrite")
    assert done.read_text() == '{"earlier": true}\n' and sorted(p.name for p in tmp_path.iterdir()) == [
        "done.json", "file", "replaced.json"]  # no .tmp left, nothing else written
    _one_error_line(under_file[0], under_file[2], "r.json: cannot be written", "is a file, not a folder")
    _one_error_line(no_qrels[0], no_qrels[2], "qrels/dev.tsv: no such file")
    assert overwrite[0] == 0, overwrite[2][-3000:]
    assert json.loads(replaced.read_text())["model"]["kind"] == "bm25"
    assert help_[0] == 0 and "configs/eval_beir.py" in help_[1] and "--overwrite" in help_[1]


def test_synthesize_bad_input_and_help(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"query": "q", "pos": ["d"]}\n{"query"\n')
    (tmp_path / "file").write_text("x")
    base = ["--config", "configs/synth_scifact.py", f"--config.input={tmp_path / 'bad.jsonl'}"]
    bad_input, under_file, help_ = _probe("o1_jax.synthesize", [
        [*base, f"--config.output={tmp_path / 'out.jsonl'}"],
        [*base, f"--config.output={tmp_path / 'file' / 'out.jsonl'}"],
        ["--help"],
    ])
    _one_error_line(bad_input[0], bad_input[2], "bad.jsonl:2: malformed JSON")
    _one_error_line(under_file[0], under_file[2], "out.jsonl: cannot be written")
    assert help_[0] == 0 and "synthesis_config()" in help_[1]


def test_plan_refuses_an_existing_json_before_compiling(tmp_path):
    out = tmp_path / "plan.json"
    out.write_text("{}\n")
    cmd = [sys.executable, "-m", "o1_jax.plan", "--config", "configs/demo.py:short", "--cpu_devices", "2"]
    proc = subprocess.run([*cmd, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    _one_error_line(proc.returncode, proc.stderr, f"{out}: already exists; pass --overwrite")
    assert out.read_text() == "{}\n" and "target:" not in proc.stdout  # nothing was compiled
    help_ = subprocess.run([*cmd, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert help_.returncode == 0 and "python -m o1_jax.defaults" in help_.stdout


# ----------------------------------------------------------------------------- argparse commands


def _forbid_model_loading(monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(O1Embedder, "from_pretrained", no_model)


def test_index_refuses_outputs_before_encoding(tmp_path, monkeypatch, capsys):
    _forbid_model_loading(monkeypatch)
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "index_info.json").write_text("{}")
    (tmp_path / "run.trec").write_text("earlier\n")
    (tmp_path / "file").write_text("x")
    build = ["build", "--model", "m", "--corpus", "c.jsonl"]
    search = ["search", "--model", "m", "--index", str(tmp_path / "idx"), "--queries", "q.jsonl"]
    _main_error(index.main, [*build, "--out", str(tmp_path / "idx")], capsys,
                f"{tmp_path / 'idx'}: exists and is not empty; pass --overwrite")
    _main_error(index.main, [*build, "--out", str(tmp_path / "file" / "idx")], capsys, "cannot be written")
    _main_error(index.main, [*search, "--out", str(tmp_path / "run.trec")], capsys,
                f"{tmp_path / 'run.trec'}: already exists; pass --overwrite")
    _main_error(index.main, [*search, "--out", str(tmp_path / "file" / "run.trec")], capsys, "cannot be written")
    assert (tmp_path / "run.trec").read_text() == "earlier\n"
    _main_error(index.main, [*search, "--out", "r.trec", "--top-k", "5"], capsys, "unrecognized arguments: --top-k")
    _main_error(index.main, [*search, "--out", "r.trec", "--top_k", "0"], capsys, "--top_k must be >= 1")


@pytest.mark.slow  # saves and loads a model, then encodes: ~15 s on 2 cores
def test_index_search_with_queries_of_another_dimension_is_one_sentence(tmp_path, capsys):
    tokenizer = synthetic.make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    hf.save_pretrained(LlamaForCausalLM(cfg), init_params(cfg, jax.random.key(0)), tmp_path / "model",
                       tokenizer=tokenizer)
    vectors = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)  # 16, not the model's 32
    Index.build(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), ["a", "b", "c", "d"],
                mode="exact").save(tmp_path / "idx")
    (tmp_path / "q.jsonl").write_text('{"_id": "q1", "text": "who"}\n')
    _main_error(index.main, ["search", "--model", str(tmp_path / "model"), "--index", str(tmp_path / "idx"),
                             "--queries", str(tmp_path / "q.jsonl"), "--out", str(tmp_path / "r.trec")], capsys,
                "built for 16-dim embeddings, the query model gives 32")
    assert not (tmp_path / "r.trec").exists()


def test_prepare_output_rule(beir, tmp_path, capsys):
    out = tmp_path / "records.jsonl"
    out.write_text("earlier\n")
    (tmp_path / "file").write_text("x")
    args = ["--beir", str(beir), "--split", "test", "--negatives", "2", "--depth", "5"]
    _main_error(prepare.main, [*args, "--out", str(out)], capsys, f"{out}: already exists; pass --overwrite")
    assert out.read_text() == "earlier\n"
    _main_error(prepare.main, [*args, "--out", str(tmp_path / "file" / "r.jsonl")], capsys, "cannot be written")
    _main_error(prepare.main, ["--beir", str(beir), "--split", "dev", "--out", str(tmp_path / "dev.jsonl")], capsys,
                "qrels/dev.tsv: no such file")
    _main_error(prepare.main, ["--beir", str(beir)], capsys, "the following arguments are required: --out")
    assert prepare.main([*args, "--out", str(out), "--overwrite"]) == 0
    assert out.read_text() != "earlier\n"


def test_export_and_fetch_check_outputs_first(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("earlier")
    (tmp_path / "file").write_text("x")
    _main_error(export.main, ["--workdir", str(tmp_path / "w"), "--out", str(out)], capsys,
                f"{out}: exists and is not empty; pass --overwrite")
    _main_error(export.main, ["--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "file" / "o")], capsys,
                "cannot be written")
    _main_error(export.main, ["--workdir", "w", "--out", "o", "--max-shard-size", "1GB"], capsys,
                "unrecognized arguments: --max-shard-size")
    _main_error(fetch.main, ["smollm2-135m-instruct", "--cache_dir", str(tmp_path / "file" / "cache")], capsys,
                "cannot be written", "is a file, not a folder")
    _main_error(fetch.main, ["smollm2-135m-instruct", "--cache-dir", str(tmp_path)], capsys,
                "unrecognized arguments: --cache-dir")


@pytest.mark.parametrize("main", [index.main, prepare.main, export.main, fetch.main])
def test_argparse_help_exits_0_and_flags_use_underscores(main, capsys):
    argv = ["build", "--help"] if main is index.main else ["--help"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    text = capsys.readouterr().out
    assert e.value.code == 0 and "--help" in text
    assert not re.findall(r"--[a-z]+-[a-z-]+", text), text


def test_launch_scripts_flags_use_underscores():
    for script in (ROOT / "launch").rglob("*"):
        if script.suffix in (".sh", ".sbatch") and script.name != "lib.sh":  # lib.sh parses no flags
            parsed = re.findall(r"^\s+(--[a-z][a-z_-]*)(?:\||\))", script.read_text(), re.M)  # case patterns
            assert parsed and not [f for f in parsed if "-" in f[2:]], (script, parsed)


# ----------------------------------------------------------------------------- shared pieces


def test_run_keeps_the_traceback_of_a_bug(capsys):
    def bug():
        raise TypeError("a bug")

    def bad():
        raise ValueError("config.x=1: expected\na number")

    with pytest.raises(TypeError, match="a bug"):
        cli.run(bug)
    assert cli.run(bad) == 2 and capsys.readouterr().err == "error: config.x=1: expected a number\n"


@pytest.mark.parametrize("error", [
    OSError(28, "/w/checkpoints: saving the checkpoint for step 2 failed: No space left on device"),
    FloatingPointError("step 3: the loss is nan and grad_norm is nan, so training stopped without saving"),
], ids=["failed-save", "non-finite-step"])
def test_a_failed_save_and_a_diverged_step_are_one_sentence(error, capsys):
    def work():
        raise error

    assert cli.run(work) == 2
    assert capsys.readouterr().err == f"error: {error}\n"


def test_check_writable(tmp_path):
    cli.check_writable(tmp_path / "new" / "deeper")  # can be created
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []  # and nothing was created
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        cli.check_writable(tmp_path / "file" / "sub")


def test_check_writable_read_only_folder(tmp_path):
    if os.geteuid() == 0:  # root writes into a chmod 555 folder; no one creates files in /proc
        with pytest.raises(ValueError, match="^/proc/out.json: cannot be written, as the folder /proc refuses new files"):
            cli.check_output("/proc/out.json")
        return
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="refuses new files"):
            cli.check_output(folder / "out.json")
    finally:
        folder.chmod(0o755)


def test_every_config_key_has_a_meaning_and_is_listed(capsys):
    keys = [k for k, _ in defaults.leaves(defaults.train_config())]
    assert sorted(keys) == sorted(defaults.MEANINGS) and all(defaults.MEANINGS.values())
    assert defaults.main([]) == 0
    listing = capsys.readouterr().out
    for key in keys:
        assert re.search(rf"^\s+{re.escape(key)}\s", listing, re.M), key
    assert "0.02" in next(x for x in listing.splitlines() if "loss.temperature" in x)


@pytest.mark.parametrize("key, value, words", [
    ("loss.temperature", 0.0, "expected a positive number"),
    ("loss.teacher_temperature", -1.0, "expected a positive number"),
    ("data.group_size", 1, "at least 2"),
    ("loss.w_ctr", -0.1, "a weight >= 0"),
    ("loss.w_gen", -1.0, "a weight >= 0"),
    ("loss.w_distill", -1.0, "a weight >= 0"),
    ("data.thought_dropout", 1.5, "[0, 1]"),
    ("data.thought_dropout", -0.1, "[0, 1]"),
    ("train.global_batch_size", 0, "a positive count"),
    ("train.microbatches", 0, "a positive count"),
    ("train.grad_cache_chunks", 0, "a positive count"),
    ("optimizer.lr", 0.0, "a positive learning rate"),
    ("optimizer.lr", -1e-4, "a positive learning rate"),
    ("data.max_query_tokens", 0, "a positive count"),
    ("data.max_thought_tokens", 0, "a positive count"),
    ("data.max_doc_tokens", 0, "a positive count"),
    ("model.remat_policy", "everything", "one of ('none'"),
    ("optimizer.decay", "exponential", "one of ('cosine'"),
    ("optimizer.warmup_fraction", 2.0, "[0, 1]"),
    ("optimizer.b2", 1.0, "[0, 1)"),
    ("train.num_steps", -5, "0 (run train.num_epochs)"),
    ("mesh.shape", (1, -1, -1), "three sizes"),
    ("eval.temperature", -0.1, "a number >= 0"),
    ("eval.top_p", 0.0, "a probability in (0, 1]"),
    ("eval.top_p", 1.5, "a probability in (0, 1]"),
])
def test_impossible_config_values_name_their_key(key, value, words):
    config = defaults.train_config()
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=rf"^config\.{re.escape(key)}=.*{re.escape(words)}"):
        defaults.check_config(config)


def test_every_training_config_passes_the_checks():
    for path in sorted((ROOT / "configs").glob("*.py")):
        module = importlib.import_module(f"configs.{path.stem}")
        config = module.get_config()
        if "optimizer" in config:  # a training config (not eval_beir / synth_*)
            defaults.check_config(config)
