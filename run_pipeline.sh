#!/usr/bin/env bash
# Run the six stages in order, skipping every stage whose outputs are up to date (make/DVC style).
#
#   ./run_pipeline.sh [DATA_DIR] [options] [-- stage-2 source options]
#   ./run_pipeline.sh --demo                    # offline demo on demo/nih-24 into data/demo
#   ./run_pipeline.sh data --source folder --images "my xrays" --labels "my xrays/labels.csv"
#   ./run_pipeline.sh --explain MODEL_DIR IMAGES RESULTS [cxr-explain options]
#                                              # a trained model on new X-rays (cxr-explain --help)
#
# Options (cxr-scrape's own options, e.g. --source, go to stage 2; any other is refused):
#   --demo               use the bundled 24 NIH images (folder source); DATA_DIR defaults to data/demo
#   --from STAGE         re-run stage STAGE and every later one; earlier stages are taken as done
#                        (STAGE: 1-6 or download, scrape, features, examples, train, visualize)
#   --force              re-run every stage
#   --set STAGE.FLAG=VALUE  one stage's flag for this run, over DATA_DIR/params.toml
#                        (e.g. --set train.epochs=20, --set visualize.method=grad-cam)
#   --limit N            explain only N test images in stage 6 (= --set visualize.limit=N)
#   --random-weights     use seeded random VGG16 weights (offline smoke runs; heatmaps mean nothing)
#   --weights-from FILE  install VGG16 weights from a file you brought (air-gapped sites)
#   --seed N             seed for the split, the training and the random weights (default 0)
#   --version            print the version
#   -h, --help           this text
#
# Parameters: DATA_DIR/params.toml holds one table per stage (download, scrape, features,
# examples, train, visualize); each key is a flag of that stage's command (see its --help),
# true/false for switches, a list for flags that repeat. For example data/demo/params.toml:
#
#   [train]
#   epochs = 20                       # cxr-train --epochs 20
#   [visualize]
#   method = ["deeplift", "grad-cam"] # cxr-visualize --method deeplift --method grad-cam
#
# then `./run_pipeline.sh --demo` re-runs stage 5 and 6 only. A key that is no flag of its stage,
# or a value a stage would refuse, is refused before any stage runs, naming it: every stage's
# full command line is checked by that stage's own parser first.
#
# Paths (DATA_DIR, --weights-from, --images, --labels, ...) are taken from the folder you run
# this from; DATA_DIR defaults to data/ (data/demo/ with --demo) in the repository.
#
# A stage is skipped when its outputs exist, are newer than its inputs, it was last run with the
# same command line (kept in DATA_DIR/.stamps/; parameters are part of it), and no earlier stage
# ran in this call. So a changed parameter re-runs its stage and every later one, never an
# earlier one. A stage that fails stops the chain with its own message and a non-zero exit; an
# interrupted stage leaves complete files only and is re-run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# No `cd`: every path the user gives is resolved from the caller's folder, as any command does.

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "run_pipeline: error: $*" >&2; exit 2; }
need_value() { [ "$2" -ge 2 ] || die "$1 needs a value (see ./run_pipeline.sh --help)"; }
# the repository's own default folders, written relative when run from the repository
repo_path() { if [ "$PWD" = "$ROOT" ]; then echo "$1"; else echo "$ROOT/$1"; fi; }

if [ "${1:-}" = "--explain" ]; then  # not a stage: the trained model applied to new images
  shift; source "$ROOT/scripts/ensure_venv.sh"; exec cxr-explain "$@"
fi
DATA="" DEMO=0 FROM=1 FROM_GIVEN=0 FORCE=0 RANDOM_WEIGHTS=0 WEIGHTS_FROM="" SEED=0
SOURCE_ARGS=() OVERRIDES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --demo) DEMO=1 ;;
    --from) need_value "$1" $#; FROM="$2"; FROM_GIVEN=1; shift ;;
    --force) FORCE=1 ;;
    --set) need_value "$1" $#; OVERRIDES+=(--set "$2"); shift ;;
    --limit) need_value "$1" $#; [[ "$2" =~ ^[1-9][0-9]{0,8}$ ]] || die "invalid --limit ${2:0:80}: a positive integer"
             OVERRIDES+=(--set "visualize.limit=$2"); shift ;;
    --random-weights) RANDOM_WEIGHTS=1 ;;
    --weights-from) need_value "$1" $#; WEIGHTS_FROM="$2"; shift ;;
    --seed) need_value "$1" $#; SEED="$2"; shift ;;
    --version) echo "run_pipeline $(sed -n 's/^__version__ = "\(.*\)".*/\1/p' "$ROOT/scraper/__init__.py")"; exit 0 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; SOURCE_ARGS+=("$@"); break ;;
    -*) SOURCE_ARGS+=("$1") ;;  # checked against cxr-scrape's parser below, before any stage
    *) if [ -z "$DATA" ] && [ ${#SOURCE_ARGS[@]} -eq 0 ]; then DATA="$1"; else SOURCE_ARGS+=("$1"); fi ;;
  esac
  shift
done
case "$FROM" in
  1|download) FROM=1 ;; 2|scrape) FROM=2 ;; 3|features) FROM=3 ;;
  4|examples) FROM=4 ;; 5|train) FROM=5 ;; 6|visualize) FROM=6 ;;
  *) die "invalid --from ${FROM:0:80}; use 1-6 or download, scrape, features, examples, train, visualize" ;;
esac
[[ "$SEED" =~ ^[0-9]{1,10}$ ]] || die "invalid --seed ${SEED:0:80}: a non-negative integer"
[ "$DEMO" = 1 ] && DATA="${DATA:-$(repo_path data/demo)}"
DATA="${DATA:-$(repo_path data)}"
if [ -n "$WEIGHTS_FROM" ]; then
  [ -e "$WEIGHTS_FROM" ] || die "--weights-from file not found: $WEIGHTS_FROM"
  [ -f "$WEIGHTS_FROM" ] || die "--weights-from is not a regular file: $WEIGHTS_FROM"
fi
[ ! -L "$DATA/.stamps" ] || die "$DATA/.stamps is a symbolic link; remove it (it holds the pipeline's own records)"

source "$ROOT/scripts/ensure_venv.sh"
# Every stage's extra flags (params.toml + --set) and the stage-2 options, checked by the stages'
# own parsers, come back as DATA in a file (NUL-separated words), never as code to run.
WORDS_FILE="$(mktemp)"
trap 'rm -f "$WORDS_FILE"' EXIT
python -P -m learning.pipeline_params --out "$WORDS_FILE" ${OVERRIDES[@]+"${OVERRIDES[@]}"} \
  "$DATA/params.toml" -- ${SOURCE_ARGS[@]+"${SOURCE_ARGS[@]}"} || exit $?
load_words() {  # PARAMS_1..PARAMS_6, SOURCE_ARGS <- the file: magic, then 7 x (count, words)
  local -a f; local group at=1 n
  mapfile -d '' f < "$1"
  [ "${f[0]-}" = "cxr-pipeline-words/1" ] || die "internal: unreadable parameter list"
  for group in 1 2 3 4 5 6 7; do
    n="${f[at]-}"
    { [[ "$n" =~ ^[0-9]+$ ]] && [ $((at + n)) -lt ${#f[@]} ]; } || die "internal: truncated parameter list"
    case $group in
      1) PARAMS_1=("${f[@]:at+1:n}") ;; 2) PARAMS_2=("${f[@]:at+1:n}") ;;
      3) PARAMS_3=("${f[@]:at+1:n}") ;; 4) PARAMS_4=("${f[@]:at+1:n}") ;;
      5) PARAMS_5=("${f[@]:at+1:n}") ;; 6) PARAMS_6=("${f[@]:at+1:n}") ;;
      7) SOURCE_ARGS=("${f[@]:at+1:n}") ;;
    esac
    at=$((at + n + 1))
  done
}
load_words "$WORDS_FILE"
if [ "$DEMO" = 1 ]; then
  [ ${#SOURCE_ARGS[@]} -eq 0 ] || die "--demo brings its own data; drop: ${SOURCE_ARGS[*]}"
  SOURCE_ARGS=(--source folder --images "$ROOT/demo/nih-24/images" --labels "$ROOT/demo/nih-24/labels.csv"
               --label-column abnormal --group-column patient_id --boxes "$ROOT/demo/nih-24/bboxes.csv")
fi
STARTED=$SECONDS
RAN=0  # set once a stage ran: every later stage runs too
MODE=check CHECKED=()  # MODE=check: `stage` only collects each command line, to be checked first

# newest modification time (whole seconds) of the files and folders under the given paths (a
# folder's time changes when a file is added to it, even one copied with an old time); 0 if none
newest() {
  [ $# -gt 0 ] || { echo 0; return; }
  local t; t="$(find "$@" ! -name '.*' -printf '%T@\n' 2>/dev/null | sort -n | tail -n 1)"
  t="${t%%.*}"; echo "${t:-0}"
}
# oldest modification time of the given outputs; nothing if one of them is missing
oldest() {
  local p t
  for p in "$@"; do [ -e "$p" ] || return 0; done
  t="$(find "$@" -maxdepth 0 -printf '%T@\n' | sort -n | head -n 1)"
  echo "${t%%.*}"
}
# The pipeline's own small files: only a regular file is read (a FIFO would hang, /dev/zero
# never end), at most 64 KB; a file is written fresh, never through a planted link.
read_small() { if [ -f "$1" ] && [ ! -L "$1" ]; then head -c 65536 -- "$1" 2>/dev/null || true; fi; }
write_small() {
  rm -f -- "$1" 2>/dev/null || die "cannot replace $1 (a folder?); remove it"
  ( set -C; printf '%s' "$2" > "$1" ) 2>/dev/null || die "cannot write $1"
}

# stage NUM NAME --deps [INPUT...] --outs OUTPUT... -- COMMAND...   (as dvc.yaml's deps and outs)
# Skipped when: before --from; or (no --force/--from, no earlier stage ran) the last successful
# run had the same command line, every output exists and no input is newer than the oldest output.
stage() {
  local num="$1" name="$2" stamp="$DATA/.stamps/$1-$2" out_time cmd
  local -a inputs=() outputs=()
  shift 2
  [ "$1" = "--deps" ] && shift
  while [ "$1" != "--outs" ]; do inputs+=("$1"); shift; done; shift
  while [ "$1" != "--" ]; do outputs+=("$1"); shift; done; shift
  if [ "$MODE" = check ]; then CHECKED+=("$num" "$#" "$@"); return 0; fi
  cmd="$(printf '%q ' "$@")"; cmd="${cmd% }"  # the exact words, quoted as a shell would
  if [ "$num" -lt "$FROM" ]; then
    echo "== stage $num ($name): before --from $FROM, not checked" >&2; return 0
  fi
  if [ "$FORCE" = 0 ] && [ "$FROM_GIVEN" = 0 ] && [ "$RAN" = 0 ] && [ "$(read_small "$stamp")" = "$cmd" ]; then
    out_time="$(oldest "${outputs[@]}")"
    if [ -n "$out_time" ] && [ "$(newest ${inputs[@]+"${inputs[@]}"})" -le "$out_time" ]; then
      echo "== stage $num ($name): up to date, skipped" >&2; return 0
    fi
  fi
  echo "== stage $num ($name): $cmd" >&2
  rm -f -- "$stamp" 2>/dev/null || die "cannot replace $stamp (a folder?); remove it"
  "$@" || return $?
  write_small "$stamp" "$cmd"$'\n'
  RAN=1
}

W="$DATA/vgg16.weights.h5"
URL_ARGS=()  # CXR_WEIGHTS_URL: a mirror of the VGG16 weights file (same hash), e.g. on an intranet
[ -n "${CXR_WEIGHTS_URL:-}" ] && URL_ARGS=(--url "$CXR_WEIGHTS_URL")
download_stage() {
  [ "$RANDOM_WEIGHTS" = 0 ] || return 0
  if [ -n "$WEIGHTS_FROM" ]; then
    stage 1 download --deps "$WEIGHTS_FROM" --outs "$W" -- cxr-download-model "$W" --from "$WEIGHTS_FROM" ${PARAMS_1[@]+"${PARAMS_1[@]}"}
  elif [ "$DEMO" = 1 ] && [ "$MODE" = run ]; then
    # The demo must run offline: without the ImageNet weights it falls back to random ones,
    # and remembers that, so re-runs do not wait for the network again (--force retries).
    FALLBACK="$DATA/.stamps/1-download-unavailable"
    if [ ! -e "$W" ] && [ -e "$FALLBACK" ] && [ "$FORCE" = 0 ] && [ "$FROM" -gt 1 -o "$FROM_GIVEN" = 0 ]; then
      echo "== stage 1 (download): weights were unavailable last time; skipped (--force retries)" >&2
    else
      stage 1 download --deps --outs "$W" -- cxr-download-model "$W" ${URL_ARGS[@]+"${URL_ARGS[@]}"} ${PARAMS_1[@]+"${PARAMS_1[@]}"} || true
    fi
    if [ -e "$W" ]; then
      rm -f -- "$FALLBACK"
    else
      [ -e "$FALLBACK" ] || echo "run_pipeline: the ImageNet VGG16 weights could not be had; the demo goes on with random weights" >&2
      write_small "$FALLBACK" ""
      RANDOM_WEIGHTS=1
    fi
  else
    stage 1 download --deps --outs "$W" -- cxr-download-model "$W" ${URL_ARGS[@]+"${URL_ARGS[@]}"} ${PARAMS_1[@]+"${PARAMS_1[@]}"}
  fi
}
SOURCE_INPUTS=()
for arg in ${SOURCE_ARGS[@]+"${SOURCE_ARGS[@]}"}; do [ -e "$arg" ] && SOURCE_INPUTS+=("$arg"); done
SPLIT_ARGS=(--seed "$SEED")
[ "$DEMO" = 1 ] && SPLIT_ARGS+=(--test-fraction 0.3)  # a gallery of ~8 demo images, not 2

later_stages() {  # stages 2-6, one line each (with random weights no weights file is passed)
  local -a random_flags=() weights_arg=("$W") weights_input=("$W") train_weights=(--weights "$W")
  if [ "$RANDOM_WEIGHTS" = 1 ]; then
    random_flags=(--random-weights --seed "$SEED") weights_arg=() weights_input=() train_weights=()
  fi
  stage 2 scrape --deps ${SOURCE_INPUTS[@]+"${SOURCE_INPUTS[@]}"} --outs "$DATA/images-description.json" -- \
    cxr-scrape "$DATA" ${SOURCE_ARGS[@]+"${SOURCE_ARGS[@]}"} ${PARAMS_2[@]+"${PARAMS_2[@]}"}
  stage 3 features --deps "$DATA/images" ${weights_input[@]+"${weights_input[@]}"} --outs "$DATA/transfer_features.pickle" "$DATA/transfer_features.pickle.shards" -- \
    cxr-extract-features "$DATA/images" "$DATA/transfer_features.pickle" ${weights_arg[@]+"${weights_arg[@]}"} \
      ${random_flags[@]+"${random_flags[@]}"} ${PARAMS_3[@]+"${PARAMS_3[@]}"}
  stage 4 examples --deps "$DATA/images-description.json" "$DATA/transfer_features.pickle" \
    --outs "$DATA/training.pickle" "$DATA/testing.pickle" "$DATA/examples.json" -- \
    cxr-prepare-examples "$DATA/images-description.json" "$DATA/transfer_features.pickle" \
      "$DATA/training.pickle" "$DATA/testing.pickle" "$DATA/examples.json" "${SPLIT_ARGS[@]}" \
      ${PARAMS_4[@]+"${PARAMS_4[@]}"}
  stage 5 train --deps "$DATA/training.pickle" "$DATA/testing.pickle" --outs "$DATA/model/config.json" "$DATA/model/metrics.json" -- \
    cxr-train "$DATA/training.pickle" "$DATA/testing.pickle" "$DATA/model" --seed "$SEED" \
      ${train_weights[@]+"${train_weights[@]}"} ${PARAMS_5[@]+"${PARAMS_5[@]}"}
  stage 6 visualize --deps "$DATA/model" "$DATA/examples.json" "$DATA/images-description.json" ${weights_input[@]+"${weights_input[@]}"} \
    --outs "$DATA/results/index.html" "$DATA/results/index.json" -- \
    cxr-visualize "$W" "$DATA/model" "$DATA/examples.json" "$DATA/images" "$DATA/results" \
      ${random_flags[@]+"${random_flags[@]}"} ${PARAMS_6[@]+"${PARAMS_6[@]}"}
}

# 1. Check every stage's complete command line with that stage's own parser before any runs
# (the demo's fallback to random weights too: it is decided only by stage 1).
download_stage
later_stages
if [ "$DEMO" = 1 ] && [ "$RANDOM_WEIGHTS" = 0 ]; then RANDOM_WEIGHTS=1; later_stages; RANDOM_WEIGHTS=0; fi
printf '%s\0' "${CHECKED[@]}" | python -P -m learning.pipeline_params --check - || exit $?

# 2. Run them.
MODE=run
mkdir -p "$DATA/.stamps"
download_stage
if [ "$RANDOM_WEIGHTS" = 1 ]; then
  cat >&2 <<'EOF'
##########################################################################################
#  RANDOM VGG16 WEIGHTS: features, classifier and heatmaps are a smoke test only and     #
#  mean nothing clinically. Get the ImageNet weights with cxr-download-model (or         #
#  --weights-from FILE on an air-gapped machine) for real localization.                  #
##########################################################################################
EOF
fi
later_stages

echo "run_pipeline: done in $((SECONDS - STARTED)) s; open $DATA/results/index.html" >&2
