#!/usr/bin/env python3
"""Prefill attention through PyTorch on the shapes of `qwen3-mpi bench-attention`, as the
baseline our kernels are held to. Same inputs (q as an (L, H, D) tensor, K/V as strided views of
one (E, 2, KVH, D) cache layer), same causal mask (a chunk at positions [E - L, E): query i sees
keys <= E - L + i, the diagonal at the bottom right), same f32 check on a sample of query rows,
same columns.

  python3 torch_attention.py [--shapes 1024@4096,16384@16384] [--backends ...] [--json]

Backends (a backend that refuses a shape says so in its row, and the next one runs):
  torch-cudnn     F.scaled_dot_product_attention under sdpa_kernel(SDPBackend.CUDNN_ATTENTION)
  torch-flash     the same under SDPBackend.FLASH_ATTENTION
                  (L == E: is_causal=True; L < E: is_causal is top-left in PyTorch, so a
                  bottom-right boolean mask is passed, or causal_lower_right(L, E) if the mask
                  is refused; each row says which)
  flash-op        torch.ops.aten._flash_attention_forward with is_causal (FlashAttention-2 aligns
                  the causal diagonal bottom-right when L < E); checked like every row
  cudnn-fe        the cuDNN frontend's own Python API (`import cudnn`, wheel nvidia-cudnn-frontend,
                  cp312; skipped when it does not import), bottom-right causal, on the same library
                  PyTorch loaded
"""
import argparse
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

TOLERANCE = 2e-2
DEFAULT_SHAPES = "1024@4096,1024@16384,1024@32768,2048@16384,4096@32768,16384@16384"
ALL_BACKENDS = "torch-cudnn,torch-flash,flash-op,cudnn-fe"


class Refused(Exception):
    """A backend that cannot run this shape (not a wrong result)."""


def first_line(e, most=200):
    """The first line of an exception's message, with its type."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:most] if lines else ''}"


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        length, end = (int(x) for x in item.split("@"))
        if not 1 <= length <= end:
            raise SystemExit(f"--shapes: `{item}` is not L@E with 1 <= L <= E")
        shapes.append((length, end))
    return shapes


def causal_flops(length, end, heads, head_dim):
    start = end - length
    return 4.0 * heads * head_dim * (length * start + length * (length + 1) / 2.0)


def rows_to_check(length, most):
    if length <= most:
        return list(range(length))
    if most <= 1:
        return [length - 1]
    return [i * (length - 1) // (most - 1) for i in range(most)]


class Inputs:
    """q (L, H, D) and a cache layer (E, 2, KVH, D), as `bench-attention` makes them."""

    def __init__(self, length, end, heads, kv_heads, head_dim, dtype):
        self.length, self.end, self.start = length, end, end - length
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q = torch.randn(length, heads, head_dim, device="cuda").to(dtype)  # (L, H, D)
        self.kv = torch.randn(end, 2, kv_heads, head_dim, device="cuda").to(dtype)  # (E, 2, KVH, D)
        # strided views, nothing copied: q (1, H, L, D), K/V (1, KVH, E, D)
        self.q_bhsd = self.q.permute(1, 0, 2).unsqueeze(0)
        self.k_bhsd = self.kv[:, 0].permute(1, 0, 2).unsqueeze(0)
        self.v_bhsd = self.kv[:, 1].permute(1, 0, 2).unsqueeze(0)
        self.scale = 1.0 / math.sqrt(head_dim)

    def bottom_right_mask(self):
        """(L, E) bool, True where query i may see key j: j <= start + i."""
        queries = torch.arange(self.start, self.end, device="cuda").view(-1, 1)
        keys = torch.arange(self.end, device="cuda").view(1, -1)
        return keys <= queries


class Check:
    """Attention in f32 on a sample of the chunk's query rows."""

    def __init__(self, inputs, most):
        self.rows = torch.tensor(rows_to_check(inputs.length, most), device="cuda")
        group = inputs.heads // inputs.kv_heads
        q = inputs.q[self.rows].float().transpose(0, 1)  # (H, R, D)
        k = inputs.kv[:, 0].float().transpose(0, 1).repeat_interleave(group, 0)  # (H, E, D)
        v = inputs.kv[:, 1].float().transpose(0, 1).repeat_interleave(group, 0)  # (H, E, D)
        scores = (q @ k.transpose(1, 2)) * inputs.scale  # (H, R, E)
        positions = (inputs.start + self.rows).view(-1, 1)
        visible = torch.arange(inputs.end, device="cuda").view(1, -1) <= positions  # (R, E)
        scores = scores.masked_fill(~visible, float("-inf"))
        self.expected = (torch.softmax(scores, -1) @ v).transpose(0, 1)  # (R, H, D)
        del scores

    def relative_error(self, out):
        """out: (L, H, D)."""
        got = out.float()[self.rows]
        return (torch.linalg.vector_norm(got - self.expected) / torch.linalg.vector_norm(self.expected)).item()


def sdpa_call(inputs, backend):
    """A call of F.scaled_dot_product_attention under one SDPA backend, and how it masks."""
    kwargs = dict(scale=inputs.scale, enable_gqa=True)
    q, k, v = inputs.q_bhsd, inputs.k_bhsd, inputs.v_bhsd

    def run(**mask):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, **mask, **kwargs)[0].transpose(0, 1)  # (L, H, D)

    if inputs.length == inputs.end:
        masks = [("is_causal", dict(is_causal=True))]
    else:
        masks = [("bool mask", dict(attn_mask=inputs.bottom_right_mask()))]
        try:
            from torch.nn.attention.bias import causal_lower_right

            masks.append(("causal_lower_right", dict(attn_mask=causal_lower_right(inputs.length, inputs.end))))
        except ImportError:
            pass
    refusals = []
    for how, mask in masks:
        try:
            run(**mask)
            torch.cuda.synchronize()
            return (lambda: run(**mask)), how
        except Exception as e:  # "No available kernel", an unsupported mask, layout or argument
            refusals.append(f"{how}: {first_line(e, 160)}")
    raise Refused("; ".join(refusals))


def flash_op_call(inputs):
    """FlashAttention-2 in PyTorch, called directly: (B, S, H, D) layout, GQA and the bottom-right
    causal diagonal are native to it."""
    q = inputs.q.unsqueeze(0)  # (1, L, H, D)
    k = inputs.kv[:, 0].unsqueeze(0)  # (1, E, KVH, D), position stride 2*KVH*D
    v = inputs.kv[:, 1].unsqueeze(0)

    def run():
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, None, None, inputs.length, inputs.end, 0.0, True, False, scale=inputs.scale
        )
        return out[0][0]  # (L, H, D)

    try:
        run()
        torch.cuda.synchronize()
    except Exception as e:  # absent in this build, another signature, an unsupported layout
        raise Refused(first_line(e))
    return run, "is_causal"


def cudnn_fe_call(inputs, state):
    """The cuDNN frontend's Python API on the same strided views; returns the call and the graph
    build time."""
    try:
        import cudnn
    except Exception as e:  # absent, or built for another CPython
        raise Refused(f"`import cudnn` failed ({first_line(e, 120)}); "
                      "carry the nvidia-cudnn-frontend wheel's cudnn/ on PYTHONPATH")
    import time

    if "handle" not in state:
        state["handle"] = cudnn.create_handle()
        state["version"] = cudnn.backend_version()
        print(f"torch_attention: cudnn-fe on cuDNN {state['version']}", file=sys.stderr)
    handle = state["handle"]
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    io = {torch.bfloat16: cudnn.data_type.BFLOAT16, torch.float16: cudnn.data_type.HALF}[inputs.q.dtype]
    built = time.perf_counter()
    graph = cudnn.pygraph(io_data_type=io, intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT)
    q = graph.tensor_like(inputs.q_bhsd)
    k = graph.tensor_like(inputs.k_bhsd)
    v = graph.tensor_like(inputs.v_bhsd)
    o, _ = graph.sdpa(name="prefill", q=q, k=k, v=v, generate_stats=False, attn_scale=inputs.scale,
                      diagonal_alignment=cudnn.diagonal_alignment.BOTTOM_RIGHT, diagonal_band_right_bound=0)
    o.set_output(True).set_dim(list(inputs.q_bhsd.shape)).set_stride(list(inputs.q_bhsd.stride()))
    try:
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A])
        graph.check_support()
        graph.build_plans()
    except Exception as e:
        raise Refused(first_line(e))
    build_ms = (time.perf_counter() - built) * 1e3
    workspace = torch.empty(max(graph.get_workspace_size(), 1), device="cuda", dtype=torch.uint8)

    def run():
        out = torch.empty_like(inputs.q)  # (L, H, D): the strides set on o
        graph.execute({q: inputs.q_bhsd, k: inputs.k_bhsd, v: inputs.v_bhsd,
                       o: out.permute(1, 0, 2).unsqueeze(0)}, workspace, handle=handle)
        return out

    return run, build_ms


def time_calls(call, warmup, iters):
    """Warm-up calls, then `iters` calls each between two CUDA events queued back to back;
    returns the times (s) and the last output."""
    out = call()
    for _ in range(1, warmup):
        out = call()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
    events[0].record()
    for i in range(iters):
        out = call()
        events[i + 1].record()
    torch.cuda.synchronize()
    return [events[i].elapsed_time(events[i + 1]) * 1e-3 for i in range(iters)], out


def measure(name, inputs, check, args, fe_state):
    row = dict(backend=name, len=inputs.length, end=inputs.end, heads=inputs.heads, kv_heads=inputs.kv_heads,
               head_dim=inputs.head_dim, dtype=str(inputs.q.dtype).replace("torch.", "").replace("bfloat16", "bf16")
               .replace("float16", "f16"), status="", iters=0, median_ms=None, min_ms=None, tflops=None,
               rel_err=None, build_ms=None)
    try:
        if name == "torch-cudnn":
            call, how = sdpa_call(inputs, SDPBackend.CUDNN_ATTENTION)
        elif name == "torch-flash":
            call, how = sdpa_call(inputs, SDPBackend.FLASH_ATTENTION)
        elif name == "flash-op":
            call, how = flash_op_call(inputs)
        elif name == "cudnn-fe":
            call, row["build_ms"] = cudnn_fe_call(inputs, fe_state)
            how = "bottom-right"
        else:
            raise SystemExit(f"--backends: unknown backend {name}")
    except Refused as e:
        row["status"] = f"unavailable: {e}"
        return row
    try:
        times, out = time_calls(call, args.warmup, args.iters)
    except Exception as e:
        row["status"] = f"FAILED: {first_line(e)}"
        return row
    times.sort()
    median = statistics.median(times)
    row.update(iters=len(times), median_ms=median * 1e3, min_ms=times[0] * 1e3,
               tflops=causal_flops(inputs.length, inputs.end, inputs.heads, inputs.head_dim) / median / 1e12)
    err = check.relative_error(out)
    row["rel_err"] = err
    ok = math.isfinite(err) and err <= TOLERANCE
    row["status"] = f"ok ({how})" if ok else f"FAILED: relative error {err:.3e} above {TOLERANCE:g} ({how})"
    return row


def format_row(r):
    def num(v, width, precision):
        return f"{v:>{width}.{precision}f}" if v is not None else f"{'-':>{width}}"

    rel_err = f"{r['rel_err']:>10.2e}" if r["rel_err"] is not None else f"{'-':>10}"
    return (f"{r['backend']:<14} {r['len']:>5} {r['end']:>8} {str(r['heads']) + '/' + str(r['kv_heads']):>6} "
            f"{r['dtype']:>6} {num(r['median_ms'], 10, 3)} {num(r['min_ms'], 10, 3)} {num(r['tflops'], 8, 1)} "
            f"{rel_err} {num(r['build_ms'], 10, 1)}  {r['status']}")


HEADER = (f"{'backend':<14} {'L':>5} {'end':>8} {'heads':>6} {'dtype':>6} {'median ms':>10} {'min ms':>10} "
          f"{'TFLOP/s':>8} {'rel err':>10} {'build ms':>10}  status")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="L@E,...: L queries ending at position E")
    ap.add_argument("--backends", default=ALL_BACKENDS)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=["bf16", "f16"], default="bf16")
    ap.add_argument("--check-rows", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON line after the table")
    args = ap.parse_args()
    if args.heads % args.kv_heads:
        raise SystemExit("--heads must be a multiple of --kv-heads")
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    torch.manual_seed(args.seed)
    print(f"torch_attention: torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
          f"{torch.cuda.get_device_name()}", file=sys.stderr)
    rows, fe_state = [], {}
    for length, end in parse_shapes(args.shapes):
        inputs = Inputs(length, end, args.heads, args.kv_heads, args.head_dim, dtype)
        check = Check(inputs, args.check_rows)
        for name in args.backends.split(","):
            row = measure(name, inputs, check, args, fe_state)
            print(f"torch_attention: {name} {length}@{end}: {row['status']}", file=sys.stderr)
            rows.append(row)
        del inputs, check
        torch.cuda.empty_cache()
    print(HEADER)
    for r in rows:
        print(format_row(r))
    if args.json:
        print(json.dumps(rows))
    failed = sum(r["status"].startswith("FAILED") for r in rows)
    if failed:
        print(f"torch_attention: {failed} of {len(rows)} rows failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
