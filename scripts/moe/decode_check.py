#!/usr/bin/env python3
"""Qwen3-MoE on a GPU (issue 17): the dense GPU check's teacher-forced decode check
(scripts/gpu_check/decode_check.py: each token our run generated after a long prompt against
transformers' greedy choice for the same prefix) with the model class transformers picks from
config.json, so that it loads Qwen3MoeForCausalLM. Same arguments:

  decode_check.py prompt OUT.txt --tokens N
  decode_check.py verify MODEL PROMPT.txt RUN.json...
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpu_check"))
import decode_check as dense  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

dense.Qwen3ForCausalLM = AutoModelForCausalLM  # verify() loads the model through this name

if __name__ == "__main__":
    dense.main()
