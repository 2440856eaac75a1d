# Call 3: rank agreement again, with the binary whose staged weight upload allocates on the compute
# stream and returns a tensor only once its copies have landed (src/model/staged_upload.rs).
out=${1:?}; cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $out/card.txt
VARIANTS="default=separate@rows both=fused@experts experts=separate@experts fused=fused@rows" \
  BUDGET_S=${BUDGET_S:-290} bash scripts/gpu_check/rank_agreement.sh $out/agree > $out/agree.log 2>&1; echo "rc=$?" >> $out/agree.log
tail -n 40 $out/agree.log
# the same job's wall time with the earlier binary (ed27948), same call: the cost of waiting for each upload
xz -dc .carry/qwen3-mpi-ed27948.xz > /tmp/qwen3-mpi-ed27948 && chmod +x /tmp/qwen3-mpi-ed27948
BIN=/tmp/qwen3-mpi-ed27948 VARIANTS="default=separate@rows" REPEATS=2 BUDGET_S=60 \
  bash scripts/gpu_check/rank_agreement.sh $out/earlier > $out/earlier.log 2>&1
grep "^| default-" $out/earlier/rank-agreement.md
