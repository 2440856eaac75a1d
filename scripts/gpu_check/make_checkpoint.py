#!/usr/bin/env python3
"""GPU check, step 1: a random Qwen3-0.6B-shaped checkpoint (bf16) and transformers' bf16
reference logits at the last prompt position for several prompts. `--heads 32 --layers 8` makes
a smaller one with Qwen3-8B's 4 query heads per KV head (for the decode check).

Weights are uniform like src/model/synthetic.rs (norms near 1, small embeddings, linear layers
scaled by 1/sqrt(fan_in)), drawn with torch from a fixed seed, so the logits are peaked enough
for top-1 agreement to mean something.
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pipeline parallelism splits the layers of a model across GPUs; each rank keeps the whole KV cache.",
    "In 1905 Albert Einstein published four papers that changed physics. The first explained",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
]


def randomize(model):
    """Uniform like src/model/synthetic.rs: norms near 1, small embeddings, the rest 1/sqrt(fan_in).
    Also used by scripts/moe/make_moe_checkpoint.py."""
    gen = torch.Generator(device="cuda").manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            u = torch.rand(p.shape, generator=gen, device="cuda", dtype=torch.float32) * 2 - 1
            if name.endswith("norm.weight"):
                v = 1 + u / 4
            elif name.endswith("embed_tokens.weight"):
                v = u * 0.05
            else:
                v = u / (p.shape[-1] ** 0.5)
            p.copy_(v)
            del u, v  # one parameter's f32 draw at a time (a 30B model's would not fit)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True, help="folder with tokenizer.json and tokenizer_config.json")
    ap.add_argument("--reference", required=True, help="folder for reference logits and prompts.json")
    ap.add_argument("--heads", type=int, default=16, help="query heads (8 KV heads; 32 gives Qwen3-8B's 4 per KV head)")
    ap.add_argument("--layers", type=int, default=28)
    args = ap.parse_args()

    cfg = Qwen3Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                      rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643,
                      eos_token_id=151645, dtype="bfloat16")
    torch.manual_seed(1234)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(cfg)
    randomize(model)
    model = model.to(torch.bfloat16).eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(args.tokenizer, f), os.path.join(args.out, f))

    tok = AutoTokenizer.from_pretrained(args.out)
    os.makedirs(args.reference, exist_ok=True)
    meta = []
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids], device="cuda")).logits[0, -1].float().cpu()
            out = model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=16, do_sample=False,
                                 pad_token_id=151643)
        save_file({"logits": logits.contiguous()}, os.path.join(args.reference, f"logits-{i}.safetensors"))
        meta.append({"prompt": prompt, "ids": ids, "greedy": out[0, len(ids):].tolist()})
        with open(os.path.join(args.reference, f"prompt-{i}.txt"), "w") as f:
            f.write(prompt)
    with open(os.path.join(args.reference, "prompts.json"), "w") as f:
        json.dump(meta, f)
    print(f"checkpoint in {args.out}; {len(PROMPTS)} reference prompts")


if __name__ == "__main__":
    main()
