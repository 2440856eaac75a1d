# Call 2: correctness of the chosen variants: gpu-one.sh's check (logits, teacher-forced 2/4/5/8 per KV head, ids across ranks), the MoE teacher-forced check.
out=${1:?}; cd "$(dirname "$0")/.."
source .carry/winners.sh | tee $out/winners.txt; source .carry/winners.sh > /dev/null
PHASES=check MODES=auto BUDGET_S=330 bash scripts/gpu-one.sh /tmp/one > $out/one.log 2>&1; echo "one rc=$?" >> $out/one.log
cp /tmp/one/*.md /tmp/one/*.tar.xz $out/ 2>/dev/null
PARTS=moe BUDGET_S=100 bash scripts/gpu_check/decode_ab.sh /tmp/ab > $out/ab.log 2>&1; echo "ab rc=$?" >> $out/ab.log
cp /tmp/ab/*.md /tmp/ab/*.tar.xz $out/ 2>/dev/null
grep -vE "wall;" $out/one.log | tail -n 70; tail -n 25 $out/ab.log
