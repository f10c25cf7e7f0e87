#!/usr/bin/env bash
# The regime study of issue 15: long fine-tuning on small data, the last checkpoint, adapters
# that carry the adaptation. One command per task; every step is a `balora compare` that
# resumes per (method, seed), so rerunning a command after an interruption continues it.
#
#   bash benchmarks/regime_study.sh text   [OUT]   # MiniLM, 640 Rotten Tomatoes snippets
#   bash benchmarks/regime_study.sh llm    [OUT]   # SmolLM2-135M scores "A. negative / B. positive"
#   bash benchmarks/regime_study.sh llm-screen [OUT]  # BaLoRA's lever on the LLM's validation split
#   bash benchmarks/regime_study.sh vision [OUT]   # EfficientNet-Lite0, 1,000 Fashion-MNIST images
#   bash benchmarks/regime_study.sh mof    [OUT]   # CGCNN, the 673 training MOFs
#
# OUT defaults to runs/regime; each task writes OUT/<task>/ and its logs. The deep ensemble has
# M = 3 members on text, the LLM and images (CPU time), M = 5 on MOFs (as the MOF study).
# Two single-thread lanes run side by side (2 cores). Seeds run one after another (seed-major), so an
# interrupted study holds whole seeds. BaLoRA's options (the "lever") are chosen on the
# validation split only: `--evaluate-on validation` screens, then benchmarks/regime_select.py.
set -euo pipefail
task=${1:?usage: regime_study.sh text|llm|llm-screen|vision|mof [OUT]}
out=${2:-runs/regime}/${task%-screen}  # llm-screen writes into the llm study's folder
mkdir -p "$out"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error

source "$(dirname "$0")/regime_lib.sh"

BASELINES=(lora lora_ts mc_dropout ensemble blob)  # laplace: its own folder, see laplace()
# LANE=1 or LANE=2 (mof: random or size) runs one lane only, to restart a lane that stopped
# (finished runs are reused)
lane() { [ "${LANE:-all}" = all ] || [ "${LANE}" = "$1" ]; }

case $task in
text)
  common=("${TEXT[@]}")
  lane 1 && (  # lane 1: the lever screen, BaLoRA with the chosen lever, the ensemble, then head 'new'
    lever=$(screen "$out/screen" "${common[@]}" --head adapted | tail -1)
    echo "chosen lever: $lever"
    # shellcheck disable=SC2086
    compare "$out/adapted/balora" "${SEEDS[@]}" -- "${common[@]}" --head adapted \
      --methods balora balora_constant "${GRID[@]}" $lever
    compare "$out/adapted/ensemble" "${SEEDS[@]}" -- "${common[@]}" --head adapted \
      --methods ensemble
    # shellcheck disable=SC2086
    compare "$out/new/balora" "${SEEDS[@]}" -- "${common[@]}" --head new \
      --methods balora balora_constant "${GRID[@]}" $lever
  ) > "$out/lane1.log" 2>&1 &
  lane 2 && (  # lane 2: the baselines with the library's adapter defaults, full fine-tuning at its lr
    compare "$out/adapted/baselines" "${SEEDS[@]}" -- "${common[@]}" --head adapted \
      --methods lora lora_ts mc_dropout blob "${BASE_GRID[@]}"
    laplace "$out/adapted/laplace" "${SEEDS[@]}" -- "${common[@]}" --head adapted \
      "${BASE_GRID[@]}"
    compare "$out/full_ft" "${SEEDS[@]}" -- "${common[@]}" --methods full_ft --lr 5e-5
    compare "$out/new/baselines" "${SEEDS[@]}" -- "${common[@]}" --head new \
      --methods lora lora_ts mc_dropout "${BASE_GRID[@]}"
  ) > "$out/lane2.log" 2>&1 &
  wait
  ;;
llm|llm-screen)
  # the paper's commonsense protocol on offline data: no new head, letters scored; BaLoRA and
  # LoRA (+ temperature, which shares LoRA's training) over the seeds first, every other method
  # with seed 0 (about an hour of training per run on one core)
  common=("${LLM[@]}")
  if [ "$task" = llm-screen ]; then
    # BaLoRA's lever on this task's own validation split (OUT/llm/screen; an hour per arm on
    # one core): the text study's lever against weaker priors, two lanes
    lane 1 && (
      screen_lora "$out/screen" "${common[@]}"
      screen_arms "$out/screen" "p0.1-element" "${common[@]}"
    ) > "$out/screen_lane1.log" 2>&1 &
    lane 2 && (
      screen_arms "$out/screen" "p0.5-element-alphalr1e-3 p0.1-layer" "${common[@]}"
    ) > "$out/screen_lane2.log" 2>&1 &
    wait
    python benchmarks/regime_select.py "$out/screen" --at 10
    exit 0
  fi
  # BaLoRA's lever: the LLM screen's choice once `regime_study.sh llm-screen` has run, else the
  # text study's; BaLoRA with another lever than the text study's gets its own folder
  text_selection=${2:-runs/regime}/text/screen/selection.json
  selection=$out/screen/selection.json
  [ -s "$selection" ] || selection=$text_selection
  read_selection() {
    python -c "import json,sys; s=json.load(open(sys.argv[1])); print(s['selected'], *s['options'])" "$1"
  }
  read -r arm lever <<< "$(read_selection "$selection")"
  read -r text_arm _ <<< "$(read_selection "$text_selection")"
  balora_dir=$out/lm/balora
  [ "$arm" = "$text_arm" ] || balora_dir=$out/lm/balora-$arm
  GRID=("${LLM_GRID[@]}")  # every sampling method's curve stops at S = 10 here
  lane 1 && (
    # shellcheck disable=SC2086
    compare "$balora_dir" "${SEEDS[@]}" -- "${common[@]}" --methods balora "${GRID[@]}" $lever
    # shellcheck disable=SC2086
    compare "$balora_dir" 0 -- "${common[@]}" --methods balora balora_constant \
      "${GRID[@]}" $lever
    compare "$out/lm/ensemble" 0 -- "${common[@]}" --methods ensemble
  ) > "$out/lane1.log" 2>&1 &
  lane 2 && (  # LoRA and LoRA + temperature scaling first: BaLoRA's references
    compare "$out/lm/baselines" "${SEEDS[@]}" -- "${common[@]}" --methods lora lora_ts \
      "${BASE_GRID[@]}"
    # the other sampling methods get BaLoRA's grid (S = 32: 32 more passes of about a minute)
    compare "$out/lm/sampling" 0 -- "${common[@]}" --methods mc_dropout blob "${GRID[@]}"
    laplace "$out/lm/laplace" 0 -- "${common[@]}" "${GRID[@]}"
  ) > "$out/lane2.log" 2>&1 &
  wait
  ;;
vision)
  # 500 validation, test and OOD images each: BaLoRA's S grid (111 passes over test and OOD)
  # costs about 7 minutes per run on one core at this size (measured: 3.6 ms per image and pass)
  # 500 validation, test and OOD images each (see regime_lib.sh)
  common=("${VISION[@]}")
  export SCREEN_ARMS=$SMALL_SCREEN
  lane 1 && (
    lever=$(screen "$out/screen" "${common[@]}" --head adapted | tail -1)
    echo "chosen lever: $lever"
    for head in adapted probe; do
      # shellcheck disable=SC2086
      compare "$out/$head/balora" "${SEEDS[@]}" -- "${common[@]}" --head "$head" \
        --methods balora balora_constant "${GRID[@]}" $lever
    done
  ) > "$out/lane1.log" 2>&1 &
  lane 2 && (  # LoRA and LoRA + temperature scaling first: BaLoRA's references for claims 2-3
    for head in adapted probe; do
      compare "$out/$head/baselines" "${SEEDS[@]}" -- "${common[@]}" --head "$head" \
        --methods lora lora_ts "${BASE_GRID[@]}"
      compare "$out/$head/baselines" "${SEEDS[@]}" -- "${common[@]}" --head "$head" \
        --methods "${BASELINES[@]}" "${BASE_GRID[@]}"
    done
    for head in adapted probe; do
      laplace "$out/$head/laplace" "${SEEDS[@]}" -- "${common[@]}" --head "$head" \
        "${BASE_GRID[@]}"
    done
    compare "$out/full_ft" "${SEEDS[@]}" -- "${common[@]}" --methods full_ft --lr 1e-4 \
      "${BASE_GRID[@]}"
  ) > "$out/lane2.log" 2>&1 &
  wait
  ;;
mof)
  # the 673 training structures of the MOF study, four times its epochs, the last checkpoint
  common=("${MOF[@]}")
  export SCREEN_ARMS=$SMALL_SCREEN
  # BaLoRA and the ensemble finish seed by seed (an interrupted study holds whole pairs for
  # claim 4), then the other baselines. To continue a study whose runs were committed:
  #   mkdir -p runs/regime && cp -r docs/results/regime/mof runs/regime/
  baselines() {  # baselines SPLIT N METHODS...: the first N seeds
    local split=$1 n=$2; shift 2
    compare "$out/$split/baselines" "${SEEDS[@]:0:$n}" -- "${common[@]}" --split "$split" \
      --methods "$@" "${BASE_GRID[@]}"
  }
  for split in random size; do
    lane "$split" && (
      if [ "$split" = random ]; then
        screen "$out/screen" "${common[@]}" --split random | tail -1 > "$out/lever.txt.part"
        mv "$out/lever.txt.part" "$out/lever.txt"
      else  # the first seed's baselines need no lever: they run while lane 'random' screens
        baselines size 1 lora ensemble
        while [ ! -s "$out/lever.txt" ]; do
          if ! kill -0 "${random_lane:-}" 2>/dev/null; then
            echo "no lever: lane random ended without writing $out/lever.txt" >&2
            exit 1
          fi
          sleep 60
        done
      fi
      lever=$(cat "$out/lever.txt")
      echo "chosen lever: $lever"
      for n in $(seq 1 "${#SEEDS[@]}"); do
        # shellcheck disable=SC2086
        compare "$out/$split/balora" "${SEEDS[@]:0:$n}" -- "${common[@]}" --split "$split" \
          --methods balora "${GRID[@]}" $lever
        baselines "$split" "$n" lora ensemble
        # the ablation last: its training can diverge at this lr (a NaN loss on the size
        # split, seed 0), which is reported and does not stop the lane
        # shellcheck disable=SC2086
        compare "$out/$split/balora" "${SEEDS[@]:0:$n}" -- "${common[@]}" --split "$split" \
          --methods balora balora_constant "${GRID[@]}" $lever \
          || echo "balora_constant on $split, seeds ${SEEDS[*]:0:$n}: failed (see above)"
      done
      baselines "$split" "${#SEEDS[@]}" lora ensemble mc_dropout blob
    ) > "$out/$split.log" 2>&1 &
    if [ "$split" = random ]; then random_lane=$!; fi
  done
  wait
  ;;
*)
  echo "unknown task $task (text, llm, llm-screen, vision or mof)" >&2
  exit 2
  ;;
esac
python benchmarks/regime_summary.py "$out" > "$out/summary.md"
echo "wrote $out/summary.md"
