#!/usr/bin/env python3
"""Benchmark, step 1 (on the GPU machine): a random Qwen3-8B-shaped checkpoint in bf16, the card's
measured limits, and transformers' own figures on the same weights and GPU.

  hf_reference.py --out MODEL_DIR --tokenizer src/model/tiny --results DIR [--lengths 1024,4096,16384]

Writes DIR/hf.json: bf16 matmul TFLOP/s and device copy GB/s of this card; for each prompt length
transformers' prefill TTFT (sdpa, bf16, warm, median of --repeats), its last-position logits
(DIR/hf-logits-<L>.safetensors) and decode ms/token at --decode-lengths; peak GPU memory.
Prompts are the ids of `qwen3-mpi --synthetic-prompt L` (splitmix64, as src/prompt.rs).
"""
import argparse
import json
import os
import shutil
import statistics
import time

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

QWEN3_REGULAR_TOKENS = 151643
MASK = (1 << 64) - 1


def splitmix64(state, index):
    z = (state + (index + 1) * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def synthetic_prompt(n, vocab):
    limit = min(QWEN3_REGULAR_TOKENS, vocab)
    return [splitmix64(0, i) % limit for i in range(n)]


def qwen3_8b_config():
    return Qwen3Config(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=151643,
                       eos_token_id=151645, dtype="bfloat16", attn_implementation="sdpa")


def timed(fn, repeats):
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def card_limits():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm = statistics.median(timed(lambda: a @ b, 20))
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    cp = statistics.median(timed(lambda: dst.copy_(src), 10))
    return {"matmul_bf16_tflops": 2 * 8192 ** 3 / mm / 1e12, "copy_gbs": 2 * src.numel() / cp / 1e9}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--lengths", default="1024,4096,16384")
    ap.add_argument("--decode-lengths", default="1024,16384")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--decode-tokens", type=int, default=32)
    args = ap.parse_args()
    os.makedirs(args.results, exist_ok=True)
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    import transformers
    res["transformers"] = transformers.__version__

    t = time.time()
    cfg = qwen3_8b_config()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(cfg)
    model.eval()
    res["params"] = sum(p.numel() for p in model.parameters())
    res["non_embedding_params"] = res["params"] - 2 * cfg.vocab_size * cfg.hidden_size
    if not os.path.exists(os.path.join(args.out, "config.json")):
        model.save_pretrained(args.out, safe_serialization=True, max_shard_size="4GB")
        for f in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(os.path.join(args.tokenizer, f), os.path.join(args.out, f))
    res["checkpoint_s"] = time.time() - t
    print(f"checkpoint in {args.out} ({res['checkpoint_s']:.0f} s)", flush=True)

    res["card"] = card_limits()
    print(res["card"], flush=True)
    res["prefill"] = {}
    res["decode"] = {}
    with torch.no_grad():
        for n in [int(x) for x in args.lengths.split(",") if x]:
            ids = torch.tensor([synthetic_prompt(n, cfg.vocab_size)], device="cuda")
            torch.cuda.reset_peak_memory_stats()
            logits = model(ids, use_cache=False, logits_to_keep=1).logits[0, -1].float().cpu()
            save_file({"logits": logits.contiguous()}, os.path.join(args.results, f"hf-logits-{n}.safetensors"))
            times = timed(lambda: model(ids, use_cache=False, logits_to_keep=1).logits[0, -1].argmax(), args.repeats)
            res["prefill"][n] = {"ttft_s": statistics.median(times), "runs_s": times,
                                 "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30}
            print(n, res["prefill"][n], flush=True)
            del ids
        for n in [int(x) for x in args.decode_lengths.split(",") if x]:
            ids = torch.tensor([synthetic_prompt(n, cfg.vocab_size)], device="cuda")
            out = model(ids, use_cache=True, logits_to_keep=1)
            cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            steps = []
            for _ in range(args.decode_tokens):
                torch.cuda.synchronize()
                t = time.perf_counter()
                out = model(nxt, past_key_values=cache, use_cache=True)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                torch.cuda.synchronize()
                steps.append(time.perf_counter() - t)
            res["decode"][n] = {"ms_per_token": 1e3 * statistics.median(steps[2:])}
            print(n, res["decode"][n], flush=True)
            del cache, out
    with open(os.path.join(args.results, "hf.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
