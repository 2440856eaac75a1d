#!/usr/bin/env python3
"""GPU check, step 3: our bf16 logits (from --dump) against transformers' bf16 reference:
relative error ||ours - ref|| / ||ref|| and top-1 agreement per prompt."""
import json
import sys

import torch
from safetensors.torch import load_file


def main():
    ref_dir, runs_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    meta = json.load(open(f"{ref_dir}/prompts.json"))
    rows, agree = [], 0
    for i in range(n):
        ref = load_file(f"{ref_dir}/logits-{i}.safetensors")["logits"].double()
        ours = load_file(f"{runs_dir}/p{i}/logits.safetensors")["logits"].double()
        rel = float((ours - ref).norm() / ref.norm())
        top1 = int(ours.argmax()) == int(ref.argmax())
        agree += top1
        rows.append(f"| {i} | {len(meta[i]['ids'])} | {rel:.2e} | {'yes' if top1 else 'NO'} | {int(ref.argmax())} | {int(ours.argmax())} |")
    print("| prompt | tokens | rel. error vs transformers bf16 | top-1 agrees | ref top-1 | our top-1 |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\ntop-1 agreement: {agree}/{n}")


if __name__ == "__main__":
    main()
