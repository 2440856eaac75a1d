#!/usr/bin/env python3
"""GPU check, decode: each token our runs generated after a long prompt, against transformers'
greedy choice for the same prefix (teacher forcing: one forward pass over prompt + our tokens,
so an early disagreement does not hide the later steps).

  decode_check.py prompt OUT.txt --tokens N          # a long prompt of about N tokens
  decode_check.py verify MODEL PROMPT.txt RUN.json...  # table: steps where top-1 agrees
"""
import argparse

import torch
from transformers import AutoTokenizer, Qwen3ForCausalLM

from summarize import report  # the --json report of a run (same folder)

PARAGRAPH = (
    "Pipeline parallelism splits the layers of a model across GPUs; each rank keeps the whole KV "
    "cache, so decode needs no communication. The prompt is cut into chunks that flow through the "
    "pipeline, and after each layer the keys and values of a chunk go to every other rank. "
)


def write_prompt(out, tokens):
    # ~45 tokens per paragraph
    with open(out, "w") as f:
        f.write(PARAGRAPH * max(1, tokens // 45))


def verify(model_dir, prompt_path, runs):
    tok = AutoTokenizer.from_pretrained(model_dir)
    # straight onto the GPU: a 30B-A3B checkpoint in /dev/shm plus a host copy would not fit the host
    model = Qwen3ForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa",
                                             device_map="cuda").eval()
    prompt = tok(open(prompt_path).read())["input_ids"]
    print(f"prompt: {len(prompt)} tokens")
    print("| run | generated tokens | top-1 agrees with transformers | worst step: transformers' margin (logit top-1 − ours) |")
    print("|---|---|---|---|")
    bad = 0
    for path in runs:
        name = path.split("/")[-1][:-5]
        try:
            generated = report(path)["generated_ids"]
        except SystemExit as failed:  # the run failed: a row, and the check fails
            print(f"| {name} | {failed} | - | - |")
            bad += 1
            continue
        ids = torch.tensor([prompt + generated[:-1]], device="cuda")
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1:].float()  # (steps, vocab): step k chooses token k
        ref = logits.argmax(-1).tolist()
        agree = sum(int(a == b) for a, b in zip(ref, generated))
        margins = [float(logits[k, ref[k]] - logits[k, generated[k]]) for k in range(len(generated))]
        worst = max(margins)
        # a disagreement only counts when transformers' choice is clearly ahead (bf16 ties)
        bad += sum(1 for m in margins if m > 0.5)
        print(f"| {name} | {len(generated)} | {agree}/{len(generated)} | {worst:.3f} |")
    return bad


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prompt")
    p.add_argument("out")
    p.add_argument("--tokens", type=int, default=3000)
    v = sub.add_parser("verify")
    v.add_argument("model")
    v.add_argument("prompt")
    v.add_argument("runs", nargs="+")
    args = ap.parse_args()
    if args.cmd == "prompt":
        write_prompt(args.out, args.tokens)
    else:
        raise SystemExit(1 if verify(args.model, args.prompt, args.runs) else 0)


if __name__ == "__main__":
    main()
