# Call 4: Qwen3-30B-A3B (48 layers, random) made in /dev/shm; issue 17's timing with the q/k step fused and the
# experts' down product across warps; decode at 1K: default vs register@@fused@experts vs ring-u2s6@@fused@experts;
# 2 ranks sharing the GPU with redundant decode (the per-layer KV sync of sparse layers) against 1.
out=${1:?}; cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $out/card.txt
mkdir -p /tmp/moe; STAGE=make MODEL_ROOT=/dev/shm timeout 300 bash scripts/moe/check.sh /tmp/moe > $out/moe-make.log 2>&1
m=/dev/shm/qwen3-30b-a3b-random
VARIANTS="" EDGE_LENGTHS="" PROFILE=0 MOE_MODEL=$m MOE_VARIANTS="default=@@@ qk-down=register@@fused@experts ring-qk-down=ring-u2s6@@fused@experts" \
  BUDGET_S=200 bash scripts/gpu_check/gemv_sweep.sh /tmp/s3 > $out/sweep3.log 2>&1
cp /tmp/s3/gemv-sweep.md $out/gemv-sweep-moe48.md; cp /tmp/s3/gemv-sweep-runs.tar.xz $out/gemv-sweep-moe48-runs.tar.xz
cat $out/gemv-sweep-moe48.md
export QWEN3_MPI_DECODE_QK=fused QWEN3_MPI_MOE_DECODE_DOWN=experts
STAGE=timing MODEL_ROOT=/dev/shm OPTIONAL_UNTIL_S=0 bash scripts/moe/check.sh /tmp/moe > $out/moe-timing.log 2>&1
source scripts/gpu_check/machine.sh
p="--prompt-file /dev/shm/moe-ref/prompt-1.txt --max-new-tokens 16 --chunk-size 5 --json"
timeout 120 mpirun -n 1 $bin --model $m $p > $out/r-1.json 2> $out/r-1.err
timeout 150 mpirun -n 2 $bin --model $m $p --decode redundant --transport host > $out/r-2-redundant-host.json 2> $out/r-2-redundant-host.err
timeout 150 mpirun -n 2 $bin --model $m $p --decode redundant --sync ring --transport ipc > $out/r-2-redundant-ring-ipc.json 2> $out/r-2-redundant-ring-ipc.err
python3 scripts/gpu_check/summarize.py ids $out/r-1.json $out/r-2-*.json > $out/moe-ranks.md 2>&1
cp /tmp/moe/moe-check.md $out/; cp /tmp/moe/*.tar.xz $out/ 2>/dev/null
tail -n 32 $out/moe-check.md; cat $out/moe-ranks.md
