# shellcheck shell=bash
# The regime study's helpers and per-task options (issue 15), sourced by regime_study.sh and
# regime_rerun.sh so that both run every comparison with the same options (and fingerprints).
# QUICK=1: a smoke test of the whole pipeline (tiny data and budgets; not a result).

# seed-major: `compare` with seeds 0, then 0 1, then 0 1 2 (finished runs are reused)
by_seed() {
  local seeds=("$@")
  for n in $(seq 1 "${#seeds[@]}"); do
    echo "${seeds[*]:0:$n}"
  done
}

compare() {  # compare FOLDER SEEDS... -- OPTIONS...
  local folder=$1; shift
  local seeds=()
  while [ "$1" != "--" ]; do seeds+=("$1"); shift; done
  shift
  for prefix in $(by_seed "${seeds[@]}" | tr ' ' ','); do
    # shellcheck disable=SC2046
    balora compare -o "$folder" --seeds $(echo "$prefix" | tr ',' ' ') "$@" --no-progress || return 1
  done
}

laplace() {  # laplace FOLDER SEEDS... -- OPTIONS: its own folder, last in a lane; its memory
  # (the Jacobian of every adapter weight) may not fit a small machine, so a failure is
  # reported and the lane goes on
  local folder=$1; shift
  compare "$folder" "$@" --methods laplace || echo "laplace in $folder: failed (see above)"
}

screen_arms() {  # screen_arms FOLDER ARMS OPTIONS...: BaLoRA with each arm (space-separated
  # names of benchmarks/regime_select.py; "": all) on the validation split, seed 0, S = 10
  local folder=$1 wanted=$2; shift 2
  local arms
  arms=$(SCREEN_ARMS="$wanted" python benchmarks/regime_select.py --list)
  while IFS='=' read -r arm options; do
    # shellcheck disable=SC2086
    balora compare -o "$folder/$arm" --methods balora --seeds 0 --evaluate-on validation \
      "$@" $options --num-samples 10 --no-progress
  done <<< "$arms"
}

screen_lora() {  # screen_lora FOLDER OPTIONS...: the screen's reference, LoRA on validation
  local folder=$1; shift
  balora compare -o "$folder/lora" --methods lora --seeds 0 --evaluate-on validation \
    "$@" --num-samples 10 --no-progress
}

screen() {  # screen FOLDER OPTIONS... : LoRA and BaLoRA's lever arms on the validation split,
  local folder=$1; shift  # then the choice; $SCREEN_ARMS limits the arms (default: all)
  screen_lora "$folder" "$@"
  screen_arms "$folder" "${SCREEN_ARMS:-}" "$@"
  python benchmarks/regime_select.py "$folder" --at 10
}

SEEDS=(0 1 2)
GRID=(--num-samples 1 4 10 32 64)  # BaLoRA's curve against S
BASE_GRID=(--num-samples 1 4 10 32)  # the other methods (S = 64 costs 4 minutes each; fingerprinted)
# the LLM's sampling methods stop at S = 10: one pass over its 200 questions takes about 70 s
# on one thread, so S = 32 and 64 would cost two hours per run (QUICK=1 keeps it)
LLM_GRID=(--num-samples 1 4 10)
# the lever screen of images and MOFs (text screens every arm of regime_select.py)
SMALL_SCREEN="p0.1-layer p0.5-layer p0.5-element"
quick() { if [ "${QUICK:-0}" = 1 ]; then echo "$2"; else echo "$1"; fi; }
if [ "${QUICK:-0}" = 1 ]; then SEEDS=(0 1); GRID=(--num-samples 1 10); BASE_GRID=("${GRID[@]}"); fi

# The adapter options of every run in this study: the library's defaults while it ran (p 0.1,
# one KL term per layer; the defaults are now p 0.5 and the KL per element, from this study).
# BaLoRA's lever comes after them and overrides them; pinned so that the committed runs keep
# their fingerprints and a rerun continues them.
STUDY_ADAPTER=(--prior-p 0.1 --kl-reduction layer)
TEXT=("${STUDY_ADAPTER[@]}"
      --task text --max-train "$(quick 640 32)" --max-eval "$(quick 400 16)"
      --max-length 48 --batch-size 8 --epochs 100 --max-steps "$(quick 1500 4)"
      --checkpoint last --lr 1e-3 --members "$(quick 3 2)")
LLM=("${STUDY_ADAPTER[@]}"
     --task multiple-choice --dataset rotten_tomatoes --max-train "$(quick 640 16)"
     --max-eval "$(quick 200 8)" --max-length 96 --batch-size 4 --epochs 100
     --max-steps "$(quick 1000 4)" --checkpoint last --lr 1e-4 --members "$(quick 3 2)"
     --save-every 100 --test-diagnostics 32)  # 200 questions in one batch: 11 GB, 20 min
# 500 validation, test and OOD images each: BaLoRA's S grid (111 passes over test and OOD)
# costs about 7 minutes per run on one core at this size (measured: 3.6 ms per image and pass)
VISION=("${STUDY_ADAPTER[@]}"
        --task vision --max-train "$(quick 1000 32)" --max-eval "$(quick 500 16)"
        --batch-size 16 --epochs 100 --max-steps "$(quick 1000 4)" --checkpoint last
        --lr 1e-3 --members "$(quick 3 2)" --save-every 200)
# the 673 training structures of the MOF study, four times its epochs, the last checkpoint
MOF=("${STUDY_ADAPTER[@]}"
     --task mof --backbone cgcnn --epochs "$(quick 24 1)" --batch-size 32 --lr 1e-2
     --checkpoint last --members 5)
if [ "${QUICK:-0}" = 1 ]; then MOF+=(--labels "${MOF_LABELS:?QUICK=1 needs MOF_LABELS}"); fi
