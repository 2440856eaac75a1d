# Call 1: do ranks sharing the GPU agree under redundant decode, per decode-kernel variant (MoE16)?
out=${1:?}; cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $out/card.txt
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cudnn', torch.backends.cudnn.version())" >> $out/card.txt 2>&1
VARIANTS="default=separate@rows both=fused@experts experts=separate@experts fused=fused@rows" \
  BUDGET_S=${BUDGET_S:-470} bash scripts/gpu_check/rank_agreement.sh $out/agree > $out/agree.log 2>&1; echo "rc=$?" >> $out/agree.log
tar -C ~ -cJf $out/nv-cache.tar.xz .nv 2>/dev/null
tail -n 60 $out/agree.log
