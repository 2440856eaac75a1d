# Call 3: issue 14's table with the chosen variants, transformers in the same call; the
# defaults of this binary (env unset) as the same-call baseline (BASE_BIN).
out=${1:?}; cd "$(dirname "$0")/.."
source .carry/winners.sh > $out/winners.txt
xz -dc .carry/qwen3-mpi.xz > /tmp/qwen3-mpi; chmod +x /tmp/qwen3-mpi
printf '#!/bin/sh\nexec env -u QWEN3_MPI_DECODE_GEMV -u QWEN3_MPI_DECODE_GEMV_BLOCKS -u QWEN3_MPI_DECODE_QK -u QWEN3_MPI_MOE_DECODE_DOWN /tmp/qwen3-mpi "$@"\n' > /tmp/base-bin; chmod +x /tmp/base-bin
BASE_BIN=/tmp/base-bin ONLY="${ONLY:-^(1gpu-|ab-16384-op-spans|ab-(1024|16384)-(decode-profile|previous-build))}" COMM=0 RUNS=${RUNS:-3} BUDGET_S=${BUDGET_S:-420} \
  bash scripts/bench.sh /tmp/b > $out/bench.log 2>&1; echo "bench rc=$?" >> $out/bench.log
cp /tmp/b/*.md /tmp/b/*.tar.xz $out/ 2>/dev/null
tail -n 60 $out/bench.log
m=/tmp/qwen3-moe-16l-random; r=/tmp/moe-ref-16l
RUST_LOG=info timeout 120 mpirun -n 1 /tmp/base-bin --json --model $m --prompt-file $r/long.txt --max-new-tokens 24 --chunk-size 512 > $out/d-moe16-default.json 2> $out/d-moe16-default.err
python3 scripts/moe/decode_check.py verify $m $r/long.txt $out/d-moe16-default.json 2>&1 | grep -v Loading | tee $out/d-moe16-default.md
