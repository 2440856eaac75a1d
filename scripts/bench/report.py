#!/usr/bin/env python3
"""Benchmark, last step: the markdown table from OUTDIR/runs (qwen3-mpi --json reports and
transformers' hf.json), OUTDIR/logs (run windows, nvidia-smi memory log) and OUTDIR/traces.

  report.py OUTDIR
"""
import csv
import datetime
import glob
import json
import os
import statistics
import struct
import sys

import numpy as np


def report(path):
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def warm_ttft(r):
    runs = r.get("ttft_runs_s") or [r["ttft_s"]]
    return statistics.median(runs[1:] if len(runs) > 1 else runs)


def safetensors_f32(path, name="logits"):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        begin, end = header[name]["data_offsets"]
        f.seek(8 + n + begin)
        return np.frombuffer(f.read(end - begin), dtype=np.float32)


def trace_logits(path):
    try:
        import h5py
    except ImportError:
        return None
    with h5py.File(path, "r") as f:
        return f["output/prefill_logits"][:]


def logits_error(out, name, n):
    """Run `name`'s last-position logits against transformers' at prompt length n."""
    ref = os.path.join(out, f"runs/hf-logits-{n}.safetensors")
    mine = trace_logits(os.path.join(out, f"traces/{name}.h5")) if os.path.exists(ref) else None
    if mine is None:
        return "n/a"
    theirs = safetensors_f32(ref)
    rel = np.abs(mine - theirs).max() / np.abs(theirs).max()
    return f"{rel:.2e} / {'same' if mine.argmax() == theirs.argmax() else 'DIFFERENT'}"


def peak_memory(out):
    """Peak memory.used (MiB) per GPU within each run's time window."""
    windows, samples = {}, []
    try:
        with open(os.path.join(out, "logs/windows.txt")) as f:
            for line in f:
                name, t, what = line.split()
                windows.setdefault(name, {})[what] = float(t)
        with open(os.path.join(out, "logs/gpu-memory.csv")) as f:
            for row in csv.reader(f):
                ts = datetime.datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
                samples.append((ts, int(row[1]), int(row[2])))
    except (OSError, ValueError, IndexError):
        return {}
    peaks = {}
    for name, w in windows.items():
        per_gpu = {}
        for ts, gpu, used in samples:
            if w.get("start", 0) <= ts <= w.get("end", 0):
                per_gpu[gpu] = max(per_gpu.get(gpu, 0), used)
        peaks[name] = per_gpu
    return peaks


def layer_part_shares(path):
    """GPU time of the last prefill run by layer part (Gemm, Attention, Elementwise spans on the
    GPU track) and the GPU track's total (layer, embed and lm-head spans), from an --op-spans trace."""
    try:
        import h5py
    except ImportError:
        return None
    if not os.path.exists(path):
        return None
    with h5py.File(path, "r") as f:
        ds = f["ranks/0/events"]
        kinds = {v: k for k, v in h5py.check_enum_dtype(ds.dtype["kind"]).items()}
        threads = {v: k for k, v in h5py.check_enum_dtype(ds.dtype["thread"]).items()}
        ev = ds[:]
    gpu = [e for e in ev if threads[e["thread"]] == "GpuStream"]
    layers = [e for e in gpu if kinds[e["kind"]] == "LayerCompute"]
    if not layers:
        return None
    # the last prefill run's window (a trace from before the parts were dropped with their run
    # holds every run's parts)
    t0, t1 = min(e["t_start_ns"] for e in layers), max(e["t_end_ns"] for e in layers)
    gpu = [e for e in gpu if kinds[e["kind"]] not in ("Gemm", "Attention", "Elementwise")
           or (e["t_start_ns"] >= t0 and e["t_end_ns"] <= t1)]
    dur = lambda names: sum((e["t_end_ns"] - e["t_start_ns"]) * 1e-9 for e in gpu if kinds[e["kind"]] in names)
    parts = {p: dur({p}) for p in ("Gemm", "Attention", "Elementwise")}
    total = dur({"LayerCompute", "Embed", "LmHead"})
    if not total or not any(parts.values()):
        return None
    return total, parts


def flops(tokens, hf):
    layers, heads, head_dim = 36, 32, 128
    return 2 * hf["non_embedding_params"] * tokens + 2 * tokens ** 2 * head_dim * heads * layers


def main(out):
    runs = {os.path.basename(p)[:-5]: report(p) for p in glob.glob(os.path.join(out, "runs/*.json"))
            if not p.endswith("hf.json")}
    runs = {k: v for k, v in runs.items() if v}
    try:
        with open(os.path.join(out, "runs/hf.json")) as f:
            hf = json.load(f)
    except OSError:
        hf = None
    gpu = hf["gpu"] if hf else "?"
    peaks = peak_memory(out)
    print(f"# Benchmark, {datetime.date.today()}, {gpu}\n")
    print("Random weights of the Qwen3-8B shape (bf16, 36 layers, hidden 4096), same card and weights for "
          "every row; qwen3-mpi TTFT is the median of its warm prefill runs (`--prefill-runs`, first run "
          "dropped), transformers' the median of warm runs (sdpa, `logits_to_keep=1`).\n")
    if hf:
        c = hf["card"]
        print(f"Card: {gpu}; measured bf16 matmul {c['matmul_bf16_tflops']:.0f} TFLOP/s (8192^3), device copy "
              f"{c['copy_gbs']:.0f} GB/s (read+write); torch {hf['torch']}, transformers {hf['transformers']}.\n")
    print("## Prefill on one GPU\n")
    print("| card | tokens | transformers TTFT s | qwen3-mpi TTFT s | qwen3-mpi / transformers speed | qwen3-mpi tok/s | MFU qwen3-mpi | MFU transformers | chunks | peak GPU MiB (ours) | peak GiB (transformers, allocated) | logits rel err / top-1 vs transformers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    one_gpu = {}
    for name in sorted((k for k in runs if k.startswith("1gpu-")), key=lambda k: int(k.split("-")[1])):
        r, n = runs[name], int(name.split("-")[1])
        ours = warm_ttft(r)
        one_gpu[n] = ours
        h = hf["prefill"].get(str(n)) if hf else None
        ceiling = hf["card"]["matmul_bf16_tflops"] * 1e12 if hf else float("nan")
        mfu = flops(n, hf) / ours / ceiling if hf else float("nan")
        hf_mfu = flops(n, hf) / h["ttft_s"] / ceiling if h else float("nan")
        err = logits_error(out, name, n)
        peak = max(peaks.get(name, {0: 0}).values() or [0])
        print(f"| {gpu} | {n} | {h['ttft_s']:.3f} | {ours:.3f} | {h['ttft_s']/ours:.2f}x | {n/ours:.0f} | {mfu:.1%} | {hf_mfu:.1%} "
              f"| {r['chunks']} | {peak} | {h['peak_gib']:.1f} | {err} |" if h else
              f"| {gpu} | {n} | - | {ours:.3f} | - | {n/ours:.0f} | {mfu:.1%} | - | {r['chunks']} | {peak} | - | {err} |")
    print("\n## Decode on one GPU (ms per token)\n")
    print("| card | context | qwen3-mpi (median step) | transformers (forward with cache, median step) | floor (weights + KV over copy bandwidth) | qwen3-mpi / floor |")
    print("|---|---|---|---|---|---|")
    for name in sorted((k for k in runs if k.startswith("1gpu-")), key=lambda k: int(k.split("-")[1])):
        r, n = runs[name], int(name.split("-")[1])
        if not r["decode_tokens_per_s"]:
            continue
        ours = r.get("decode_ms_per_token_median") or 1e3 / r["decode_tokens_per_s"]
        h = hf["decode"].get(str(n)) if hf else None
        if hf:
            weight_bytes = 2 * (hf["non_embedding_params"] + 151936 * 4096)
            kv_bytes = n * 36 * 2 * 8 * 128 * 2
            floor = 1e3 * (weight_bytes + kv_bytes) / (hf["card"]["copy_gbs"] * 1e9)
        else:
            floor = float("nan")
        print(f"| {gpu} | {n} | {ours:.2f} | {h['ms_per_token']:.2f} | {floor:.2f} | {ours/floor:.2f}x |" if h else
              f"| {gpu} | {n} | {ours:.2f} | - | {floor:.2f} | {ours/floor:.2f}x |")
    print("\n## Prefill across GPUs (pipeline of ranks, per-layer KV sync)\n")
    print("| card | run | ranks | sync | transport | tokens | chunks | TTFT s | speedup vs 1 GPU | ideal R·C/(C+R−1) | pipeline efficiency | speedup / ranks | exposed KV sync ms (max rank; drain after the first token, delays decode) | % of TTFT | KV sync GB/s (rank 0 sent / busy) | peak GPU MiB per rank |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in sorted(k for k in runs if not k.startswith(("1gpu-", "ab-"))):
        r = runs[name]
        n, ranks, chunks = r["prompt_tokens"], r["ranks"], r["chunks"]
        ttft = warm_ttft(r)
        base = one_gpu.get(n)
        speed = base / ttft if base else float("nan")
        ideal = ranks * chunks / (chunks + ranks - 1)
        exposed = max(x["exposed_sync_s"] for x in r["per_rank"])
        r0 = r["per_rank"][0]
        bw = r0["kv_bytes_sent"] / r0["sync"]["busy_s"] / 1e9 if r0["sync"]["busy_s"] else 0
        peak = ",".join(str(v) for _, v in sorted(peaks.get(name, {}).items()))
        print(f"| {gpu} | {name} | {ranks} | {r['sync']} | {r['transport']} | {n} | {chunks} | {ttft:.3f} | {speed:.2f}x "
              f"| {ideal:.2f} | {speed/ideal:.1%} | {speed/ranks:.2f} | {exposed*1e3:.1f} | {exposed/ttft:.1%} | {bw:.1f} | {peak} |")
    ab = sorted((k for k in runs if k.startswith("ab-")), key=lambda k: (int(k.split("-")[1]), k))
    if ab:
        print("\n## One GPU, side by side in this call (issue 14)\n")
        print("| card | run | tokens | prefill attention | decode path | TTFT s | vs this build's 1-GPU run | decode ms/token | peak GPU MiB | logits rel err / top-1 vs transformers |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name in ab:
            r, n = runs[name], int(name.split("-")[1])
            ttft = warm_ttft(r)
            base = one_gpu.get(n)
            dec = r.get("decode_ms_per_token_median") or float("nan")
            peak = max(peaks.get(name, {0: 0}).values() or [0])
            print(f"| {gpu} | {name} | {n} | {r.get('prefill_attention', 'previous build')} | {r.get('decode_path', 'previous build')} "
                  f"| {ttft:.3f} | {base / ttft if base else float('nan'):.2f}x | {dec:.2f} | {peak} | {logits_error(out, name, n)} |")
        for name in ab:
            shares = layer_part_shares(os.path.join(out, f"traces/{name}.h5"))
            if shares:
                total, parts = shares
                print(f"\nGPU time of `{name}` by part of the layer (GPU track, --op-spans; "
                      f"{total * 1e3:.1f} ms of GPU spans in all, layers and head):\n")
                print("| part | ms | share of the GPU time |")
                print("|---|---|---|")
                for part, t in parts.items():
                    print(f"| {part} | {t * 1e3:.1f} | {t / total:.1%} |")
    comm = sorted(glob.glob(os.path.join(out, "runs/comm-*.txt")))
    if comm:
        print("\n## KV sync alone, 2 ranks (bench-comm; pool = candle's memory pool, malloc = "
              "QWEN3_MPI_KV_ALLOC=malloc, cma = Open MPI's single-copy host mechanism)\n")
        print("| card | run | transport | MiB per rank | median us | busbw GB/s |")
        print("|---|---|---|---|---|---|")
        for p in comm:
            with open(p) as f:
                rows = [json.loads(l) for l in f.read().splitlines() if l.startswith("[")]
            for r in (rows[-1] if rows else []):
                print(f"| {gpu} | {os.path.basename(p)[:-4]} | {r['transport']} | {r['bytes_per_rank'] / 2**20:.0f} "
                      f"| {r['median_s'] * 1e6:.0f} | {r['busbw_gbs']:.1f} |")
    failures = os.path.join(out, "logs/failures.txt")
    if os.path.exists(failures):
        print("\n## Failed runs\n")
        with open(failures) as f:
            print("".join(f"- {l}" for l in f))


if __name__ == "__main__":
    main(sys.argv[1])
