#!/usr/bin/env bash
# The MOF band-gap study of docs/mof.md (issue 6): the CGCNN backbone, 3 seeds, a random and a
# size-shift split. lora, ensemble (M=5) and balora over the whole S grid; the other sampling
# methods (mc_dropout, blob, balora_constant) at S = 32, where every method is compared. Two
# single-thread processes (one per split) on a 2-core machine; then one summary per split.
#
#   bash benchmarks/mof_study.sh LABELS.csv [OUT]     # OUT defaults to runs/mof-study
set -euo pipefail
labels=${1:?usage: mof_study.sh LABELS.csv [OUT]}
out=${2:-runs/mof-study}
mkdir -p "$out"
export OMP_NUM_THREADS=1
# --prior-p 0.1 --kl-reduction layer: the library's defaults when the committed study ran
common=(--task mof --backbone cgcnn --labels "$labels" --epochs 6 --lr 1e-2 --seeds 0 1 2
        --members 5 --prior-p 0.1 --kl-reduction layer --no-progress)
grid=(--num-samples 1 2 4 8 16 32 64 128)
baselines=(--methods mc_dropout blob balora_constant --num-samples 32)
for split in random size; do
  (
    balora compare "${common[@]}" --split "$split" -o "$out/$split" \
      --methods lora ensemble balora "${grid[@]}"
    balora compare "${common[@]}" --split "$split" -o "$out/$split-s32" "${baselines[@]}"
  ) > "$out/$split.log" 2>&1 &
done
wait
for split in random size; do
  python benchmarks/mof_summary.py "$out/$split" "$out/$split-s32" --at 32 \
    > "$out/summary-$split.md"
done
echo "wrote $out/summary-random.md and $out/summary-size.md"
