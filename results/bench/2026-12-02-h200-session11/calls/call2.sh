# Call 2: the defaults' 3-rank disagreement against how the layers a rank does not own are loaded
# (QWEN3_MPI_WEIGHT_LOAD=staged, the default; during: candle's upload beside the prefill; after).
out=${1:?}; cd "$(dirname "$0")/.."
for load in after during staged; do
  QWEN3_MPI_WEIGHT_LOAD=$load VARIANTS="default=separate@rows" REPEATS=3 BUDGET_S=150 \
    bash scripts/gpu_check/rank_agreement.sh $out/load-$load > $out/load-$load.log 2>&1
  echo "## QWEN3_MPI_WEIGHT_LOAD=$load"; grep "^| default" $out/load-$load/rank-agreement.md
done
