#!/usr/bin/env bash
# The regime study's BaLoRA runs again after the gradient-clipping fix (commit a26c5ec; issue
# 15, docs/regime.md). Only BaLoRA's training changed, so this reruns BaLoRA and
# balora_constant, the lever screens of text and images, and, as same-machine references,
# LoRA and LoRA + temperature scaling (a seeded run repeats exactly only on one machine).
#
#   mkdir -p runs/regime-fix/{text,vision}/screen
#   cp -r runs/regime/text/screen/lora runs/regime-fix/text/screen/     # optional: LoRA's
#   cp -r runs/regime/vision/screen/lora runs/regime-fix/vision/screen/ # screen arms are valid
#   bash benchmarks/regime_rerun.sh [OUT]    # OUT defaults to runs/regime-fix
#
# Two single-thread workers take the jobs below in order (a job waits for the screen it
# needs); rerunning the command after an interruption skips finished jobs and continues the
# others (every step is a resumable `balora compare`). Logs: OUT/logs/<job>.log. Not rerun:
# the MOF screen (its pre-fix choice, p 0.5 with the KL per layer, is kept), the LLM screen (the
# LLM runs the text screen's new choice and the study's p 0.1 per layer, chosen between on
# validation NLL; the chosen arm then gets seeds 1 and 2), every other baseline. A job is
# skipped by touching OUT/queue/<job>.done before the command (as the images' LoRA redraw was:
# docs/regime.md).
set -uo pipefail
out=${1:-runs/regime-fix}
queue=$out/queue
mkdir -p "$out/logs" "$queue"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
source "$(dirname "$0")/regime_lib.sh"
MOF_LEVER=(--prior-p 0.5 --kl-reduction layer)  # the MOF screen's pre-fix choice

JOBS=(  # name:the job it waits for; the ablations last
  vision-screen text-screen vision-adapted:vision-screen text-adapted:text-screen
  llm:text-screen llm-layer text-lora mof-size mof-lora-check vision-probe:vision-screen
  vision-lora-adapted vision-lora-probe mof-random llm-seeds:llm-layer text-new:text-screen
  text-lora-new mof-references:mof-lora-check text-constant:text-adapted
  vision-constant:vision-adapted llm-lora
)

lever() {  # lever TASK: the options the task's screen chose
  [ -s "$out/$1/lever.txt" ] || { echo "no lever for $1: its screen has not finished" >&2; return 1; }
  cat "$out/$1/lever.txt"
}

job() {
  local lever_options
  case $1 in
  vision-screen | text-screen)
    local task=${1%-screen} arms=$SMALL_SCREEN options=("${VISION[@]}")
    if [ "$task" = text ]; then
      arms="p0.1-layer p0.1-element p0.5-element p0.5-element-alphalr1e-3" options=("${TEXT[@]}")
    fi
    mkdir -p "$out/$task"
    SCREEN_ARMS=$arms screen "$out/$task/screen" "${options[@]}" --head adapted \
      | tail -1 > "$out/$task/lever.txt.part" && mv "$out/$task/lever.txt.part" "$out/$task/lever.txt"
    ;;
  vision-adapted | vision-probe | vision-constant)
    local head=${1#vision-} methods=(balora)
    [ "$1" = vision-constant ] && head=adapted methods+=(balora_constant)
    lever_options=$(lever vision) || return 1
    # shellcheck disable=SC2086
    compare "$out/vision/$head/balora" "${SEEDS[@]}" -- "${VISION[@]}" --head "$head" \
      --methods "${methods[@]}" "${GRID[@]}" $lever_options
    ;;
  vision-lora-adapted | vision-lora-probe)
    compare "$out/vision/${1#vision-lora-}/baselines" "${SEEDS[@]}" -- "${VISION[@]}" \
      --head "${1#vision-lora-}" --methods lora lora_ts "${BASE_GRID[@]}"
    ;;
  text-adapted | text-new | text-constant)
    local head=${1#text-} methods=(balora)
    [ "$1" = text-constant ] && head=adapted methods+=(balora_constant)
    lever_options=$(lever text) || return 1
    # shellcheck disable=SC2086
    compare "$out/text/$head/balora" "${SEEDS[@]}" -- "${TEXT[@]}" --head "$head" \
      --methods "${methods[@]}" "${GRID[@]}" $lever_options
    ;;
  text-lora | text-lora-new)
    local head=${1#text-lora-}
    [ "$1" = text-lora ] && head=adapted
    compare "$out/text/$head/baselines" "${SEEDS[@]}" -- "${TEXT[@]}" --head "$head" \
      --methods lora lora_ts "${BASE_GRID[@]}"
    ;;
  llm)  # seed 0
    lever_options=$(lever text) || return 1
    # shellcheck disable=SC2086
    compare "$out/llm/lm/balora" 0 -- "${LLM[@]}" --methods balora "${LLM_GRID[@]}" $lever_options
    ;;
  llm-layer | llm-seeds)  # the LLM's second arm after the fix: the study's p 0.1 with the KL per
    # layer (the arm closest to LoRA in the pre-fix LLM screen); chosen against `llm` on
    # validation NLL (seed 0), then seeds 1 and 2 (`llm-seeds`, 80 minutes each)
    local seeds=(0)
    [ "$1" = llm-seeds ] && seeds=("${SEEDS[@]}")
    compare "$out/llm/lm/balora-p0.1-layer" "${seeds[@]}" -- "${LLM[@]}" --methods balora \
      "${LLM_GRID[@]}"
    ;;
  llm-lora)  # same-machine LLM references (the study's were made on an unrecorded machine)
    compare "$out/llm/lm/baselines" 0 -- "${LLM[@]}" --methods lora lora_ts "${BASE_GRID[@]}"
    ;;
  mof-lora-check)  # does this machine repeat the study's MOF runs? LoRA, size split, seed 0
    compare "$out/mof/size/baselines" 0 -- "${MOF[@]}" --split size --methods lora \
      "${BASE_GRID[@]}"
    ;;
  mof-references)  # same-machine MOF references: this machine does not repeat the study's
    # MOF runs (mof-lora-check, LoRA seed 0: MAE 0.754 against the study's 0.692); LoRA's
    # seeds first, then the ensemble's, seed-major
    compare "$out/mof/size/baselines" "${SEEDS[@]}" -- "${MOF[@]}" --split size --methods lora \
      "${BASE_GRID[@]}" &&
      compare "$out/mof/size/baselines" "${SEEDS[@]}" -- "${MOF[@]}" --split size \
        --methods lora ensemble "${BASE_GRID[@]}"
    ;;
  mof-size)
    compare "$out/mof/size/balora" "${SEEDS[@]}" -- "${MOF[@]}" --split size \
      --methods balora "${GRID[@]}" "${MOF_LEVER[@]}"
    ;;
  mof-random)  # the study's random split has seeds 0 and 1
    compare "$out/mof/random/balora" 0 1 -- "${MOF[@]}" --split random \
      --methods balora "${GRID[@]}" "${MOF_LEVER[@]}"
    ;;
  esac
}

worker() {  # claims the next job (mkdir is atomic), waits for the job it needs, runs it
  local entry name needs
  for entry in "${JOBS[@]}"; do
    name=${entry%%:*} needs=${entry#*:}
    [ "$needs" = "$entry" ] && needs=""
    [ -e "$queue/$name.done" ] && continue
    mkdir "$queue/$name.claim" 2>/dev/null || continue
    while [ -n "$needs" ] && [ ! -e "$queue/$needs.done" ]; do
      [ -e "$queue/$needs.failed" ] && break
      sleep 30
    done
    echo "$(date -u +%H:%M) worker $1: $name"
    if job "$name" > "$out/logs/$name.log" 2>&1; then
      touch "$queue/$name.done"
    else
      touch "$queue/$name.failed"
      echo "$name failed (see $out/logs/$name.log)"
    fi
  done
}

rm -rf "$queue"/*.claim "$queue"/*.failed  # a rerun retries what did not finish
worker 1 &
worker 2 &
wait
ls "$queue"/*.failed 2>/dev/null && exit 1
echo "done: $out"
