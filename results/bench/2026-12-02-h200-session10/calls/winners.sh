# Sourced: the decode variants to check and time. WIN=K@B@Q and DOWN=D override; otherwise the
# sweep's fastest dense variant (${S:-/tmp/s}/fastest) and the MoE down kernel of its fastest MoE variant.
spec=${WIN:-$(cat ${S:-/tmp/s}/fastest 2>/dev/null)}; mspec=$(cat ${S:-/tmp/s}/moe-fastest 2>/dev/null)
IFS=@ read -r K B Q <<< "$spec"; IFS=@ read -r _ _ _ D <<< "$mspec"; D=${DOWN-$D}
export QWEN3_MPI_DECODE_GEMV=$K QWEN3_MPI_DECODE_GEMV_BLOCKS=$B QWEN3_MPI_DECODE_QK=$Q QWEN3_MPI_MOE_DECODE_DOWN=$D
echo "winners: GEMV=$K BLOCKS=$B QK=$Q MOE_DOWN=$D"
