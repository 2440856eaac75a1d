# Call 1: the decode kernel sweep (dense and MoE) on one GPU; its folder stays in /tmp/s for call 2.
out=${1:?}; cd "$(dirname "$0")/.."
nvidia-smi > $out/card.txt; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >> $out/card.txt
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cudnn', torch.backends.cudnn.version())" >> $out/card.txt 2>&1
nproc >> $out/card.txt; free -g >> $out/card.txt
BUDGET_S=${BUDGET_S:-480} bash scripts/gpu_check/gemv_sweep.sh /tmp/s > $out/sweep.log 2>&1; echo "sweep rc=$?" >> $out/sweep.log
cp /tmp/s/gemv-sweep.md /tmp/s/gemv-sweep-runs.tar.xz $out/ 2>/dev/null; cp /tmp/s/fastest $out/fastest 2>/dev/null; cp /tmp/s/moe-fastest $out/moe-fastest 2>/dev/null
tar -C ~ -cJf $out/nv-cache.tar.xz .nv 2>/dev/null
tail -n 80 $out/sweep.log
