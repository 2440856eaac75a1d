# Call 4: the binary with levers 31 and 32 as defaults (variables empty: `new=@`) against the same
# binary with them named (`named=fused@experts`) and with the earlier defaults (`earlier=separate@rows`).
out=${1:?}; cd "$(dirname "$0")/.."
VARIANTS="new=@ named=fused@experts earlier=separate@rows" REPEATS=1 BUDGET_S=${BUDGET_S:-100} \
  bash scripts/gpu_check/rank_agreement.sh $out/agree > $out/agree.log 2>&1; echo "rc=$?" >> $out/agree.log
grep "^| " $out/agree/rank-agreement.md
mkdir -p /tmp/r && tar -C /tmp/r -xJf $out/agree/rank-agreement-runs.tar.xz
python3 - <<'PY' | tee $out/ids-across-variants.md
import sys; sys.path.insert(0, "scripts/gpu_check")
from summarize import report
ids = {v: report(f"/tmp/r/runs/{v}-one.json")["generated_ids"] for v in ("new", "named", "earlier")}
print("one-rank ids equal across variants:", ids["new"] == ids["named"] == ids["earlier"], ids["new"])
PY
