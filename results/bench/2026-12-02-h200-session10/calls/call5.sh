# Call 5: ranks sharing the GPU with redundant decode (the per-layer KV sync of sparse layers), 16 layers of 30B-A3B's shape.
out=${1:?}; cd "$(dirname "$0")/.."; source scripts/gpu_check/machine.sh
export QWEN3_MPI_DECODE_QK=fused QWEN3_MPI_MOE_DECODE_DOWN=experts
m=/tmp/qwen3-moe-16l-random; r=/tmp/moe-ref-16l
[ -f $m/config.json ] || python3 scripts/moe/make_moe_checkpoint.py --out $m --tokenizer src/model/tiny --reference $r --layers 16 --timing-lengths "" > $out/make.log 2>&1
p="--model $m --prompt-file $r/prompt-1.txt --max-new-tokens 16 --chunk-size 5 --json"
j() { n=$1; name=$2; shift 2; timeout 100 mpirun -n $n $bin $p "$@" > $out/$name.json 2> $out/$name.err || { echo "$name failed:"; grep -iE "error|panic" $out/$name.err | head -3; }; }
j 1 s-1
j 2 s-2-redundant-host --decode redundant --transport host
j 3 s-3-redundant-ipc --decode redundant --transport ipc
j 3 s-3-redundant-ring-host --decode redundant --sync ring --layers 4,7,5 --transport host
j 2 s-2-redundant-ring-ipc --decode redundant --sync ring --transport ipc
python3 scripts/gpu_check/summarize.py ids $out/s-1.json $out/s-[23]-*.json | tee $out/moe16-ranks.md
cd $out && tar cJf moe16-ranks-runs.tar.xz *.json *.err && rm -f *.json *.err
