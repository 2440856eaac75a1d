# Sourced by slurm/env.sh. qwen3_mpi_prompt_args fills the array PROMPT_ARGS with the prompt
# flag the job variables ask for: SYNTHETIC_PROMPT (N token ids) before PROMPT_FILE before
# PROMPT; none of them set means the built-in prompt.
qwen3_mpi_prompt_args() {
  PROMPT_ARGS=()
  if [ -n "${SYNTHETIC_PROMPT:-}" ]; then
    PROMPT_ARGS=(--synthetic-prompt "$SYNTHETIC_PROMPT")
  elif [ -n "${PROMPT_FILE:-}" ]; then
    PROMPT_ARGS=(--prompt-file "$PROMPT_FILE")
  elif [ -n "${PROMPT:-}" ]; then
    PROMPT_ARGS=(--prompt "$PROMPT")
  fi
}
