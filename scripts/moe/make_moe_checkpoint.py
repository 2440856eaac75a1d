#!/usr/bin/env python3
"""Qwen3-MoE on a GPU (issue 17), step 1: a random Qwen3-30B-A3B-shaped checkpoint in bf16, saved
by transformers' own `save_pretrained` (the published per-expert names), and transformers' figures
on it, on the same GPU:

  make_moe_checkpoint.py --out MODEL_DIR --tokenizer src/model/tiny --reference REF_DIR \\
      [--layers 48] [--timing-lengths 4096,16384] [--decode-length 1024]

REF_DIR gets what scripts/gpu_check/compare.py reads (prompt-<i>.txt, logits-<i>.safetensors:
bf16 logits at the last prompt position, prompts.json) and hf.json: prefill TTFT at each timing
length (ids of `qwen3-mpi --synthetic-prompt L`, warm median), decode ms per token at
--decode-length, the card's copy bandwidth and the active-weights floor of a decode step
(weights a token reads: attention, router, its k experts, norms and lm_head, over that
bandwidth). transformers runs sdpa attention and its default experts implementation.
--layers 16 makes a shallower model of the same layer shape (for three ranks on one GPU).
"""
import argparse
import json
import os
import shutil
import statistics
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "bench"))
sys.path.insert(0, os.path.join(HERE, "..", "gpu_check"))
from hf_reference import card_limits, synthetic_prompt, timed  # noqa: E402
from make_checkpoint import PROMPTS, randomize  # noqa: E402  (the dense GPU check's prompts and weights)


def config(layers):
    """Qwen3-30B-A3B's config.json (transformers 5.x spelling when saved)."""
    return Qwen3MoeConfig(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
                          num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                          num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                          vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
                          tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645, dtype="bfloat16")


def active_params(cfg):
    """Weights one decode token reads (the embedding: one row, not counted)."""
    h, d = cfg.hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    per_layer = 2 * h * q + 2 * h * kv + 2 * d + 2 * h + cfg.num_experts * h \
        + cfg.num_experts_per_tok * 3 * h * cfg.moe_intermediate_size
    return cfg.num_hidden_layers * per_layer + cfg.vocab_size * h + h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--timing-lengths", default="4096,16384")
    ap.add_argument("--decode-length", type=int, default=1024)
    ap.add_argument("--decode-tokens", type=int, default=32)
    args = ap.parse_args()
    cfg = config(args.layers)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Qwen3MoeForCausalLM(cfg)
    randomize(model)
    model = model.eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, max_shard_size="4GB")
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(args.tokenizer, f), os.path.join(args.out, f))
    print(f"checkpoint in {args.out}: {sum(p.numel() for p in model.parameters())} parameters", flush=True)

    tok = AutoTokenizer.from_pretrained(args.out)
    os.makedirs(args.reference, exist_ok=True)
    meta = []
    with torch.no_grad():
        for i, prompt in enumerate(PROMPTS):
            ids = tok(prompt)["input_ids"]
            t = torch.tensor([ids], device="cuda")
            logits = model(t).logits[0, -1].float().cpu()
            out = model.generate(t, max_new_tokens=16, do_sample=False, pad_token_id=151643)
            save_file({"logits": logits.contiguous()}, os.path.join(args.reference, f"logits-{i}.safetensors"))
            meta.append({"prompt": prompt, "ids": ids, "greedy": out[0, len(ids):].tolist()})
            with open(os.path.join(args.reference, f"prompt-{i}.txt"), "w") as f:
                f.write(prompt)
    with open(os.path.join(args.reference, "prompts.json"), "w") as f:
        json.dump(meta, f)

    import transformers
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "transformers": transformers.__version__,
           "experts_implementation": getattr(model.config, "_experts_implementation", None),
           "layers": args.layers, "active_params": active_params(cfg), "prefill": {}}
    res["card"] = card_limits()
    res["decode_floor_ms"] = 2 * res["active_params"] / (res["card"]["copy_gbs"] * 1e9) * 1e3
    with torch.no_grad():
        for n in [int(x) for x in args.timing_lengths.split(",") if x]:
            ids = torch.tensor([synthetic_prompt(n, cfg.vocab_size)], device="cuda")
            times = timed(lambda: model(ids, use_cache=False, logits_to_keep=1).logits[0, -1].argmax(), 3)
            res["prefill"][n] = {"ttft_s": statistics.median(times), "runs_s": times}
            print(n, res["prefill"][n], flush=True)
        ids = torch.tensor([synthetic_prompt(args.decode_length, cfg.vocab_size)], device="cuda")
        out = model(ids, use_cache=True, logits_to_keep=1)
        cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        steps = []
        for _ in range(args.decode_tokens):
            def step():
                return model(nxt, past_key_values=cache, use_cache=True)
            steps += timed(step, 1)  # each step also grows the cache by one position: fine at 1K
        res["decode_ms_per_token_median"] = statistics.median(steps) * 1e3
    with open(os.path.join(args.reference, "hf.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
