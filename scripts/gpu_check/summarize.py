#!/usr/bin/env python3
"""GPU check, step 4: tables from the --json reports of the runs.

  summarize.py ids REF.json RUN.json...     # generated ids of every run equal the first's
  summarize.py timing RUN.json...           # TTFT and KV-sync figures per run
"""
import json
import sys


def report(path):
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit(f"{path}: no JSON report (the run failed; see its log)")
    return json.loads(lines[-1])


def ids(paths):
    base = report(paths[0])
    # decode: pipelined decode (ranks sharing a GPU, by default) syncs no KV cache: sync "none"
    print("| run | ranks | decode | sync | transport | generated ids equal the 1-GPU run |")
    print("|---|---|---|---|---|---|")
    bad = 0
    for p in paths[1:]:
        name = p.split('/')[-1][:-5]
        try:
            r = report(p)
        except (OSError, ValueError, IndexError, SystemExit) as e:
            # a failed run is a row of its own; the runs after it are still compared
            print(f"| {name} | | | | | FAILED (no report: {str(e)[:80]}) |")
            bad += 1
            continue
        same = r["generated_ids"] == base["generated_ids"]
        bad += not same
        print(f"| {name} | {r['ranks']} | {r.get('decode_mode', '-')} | {r['sync']} | {r['transport']} | "
              f"{'yes' if same else 'NO'} |")
    return bad


def warm(r):
    runs = r.get("ttft_runs_s") or [r["ttft_s"]]
    return runs[-1]


def comm(paths):
    """bench-comm tables (JSON line after the text table) and torch NCCL baselines, side by side."""
    rows = []
    for p in paths:
        with open(p) as f:
            text = f.read()
        lines = [l for l in text.splitlines() if l.startswith("[")]
        if lines:
            rows += json.loads(lines[-1])
    base = {(r["ranks"], r["bytes_per_rank"]): r["busbw_gbs"] for r in rows if r["transport"] == "torch-nccl-baseline"}
    print("| ranks | MiB per rank | transport | sync | median us | busbw GB/s | vs torch NCCL all_gather |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["ranks"], r["bytes_per_rank"], r["transport"], r["sync"])):
        b = base.get((r["ranks"], r["bytes_per_rank"]))
        rel = f"{r['busbw_gbs'] / b:.0%}" if b else "-"
        print(f"| {r['ranks']} | {r['bytes_per_rank'] / 2**20:.2f} | {r['transport']} | {r['sync']} | {r['median_s'] * 1e6:.0f} "
              f"| {r['busbw_gbs']:.1f} | {rel} |")
    return 0


def timing(paths):
    print("| run | ranks | sync | transport | prompt | chunk | TTFT s (last run) | prefill tok/s | KV sent MB (rank 0) | sync busy s (max rank) | exposed sync ms (max rank) | sync GB/s (rank 0 sent / busy) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in paths:
        r = report(p)
        ranks = r["per_rank"]
        busy = max(x["sync"]["busy_s"] for x in ranks)
        exposed = max(x["exposed_sync_s"] for x in ranks)
        sent = ranks[0]["kv_bytes_sent"]
        bw = sent / ranks[0]["sync"]["busy_s"] / 1e9 if ranks[0]["sync"]["busy_s"] > 0 else 0.0
        print(f"| {p.split('/')[-1][:-5]} | {r['ranks']} | {r['sync']} | {r['transport']} | {r['prompt_tokens']} | {r['chunk_size']} "
              f"| {warm(r):.3f} | {r['prefill_tokens_per_s']:.0f} | {sent/1e6:.1f} | {busy:.3f} | {exposed*1e3:.1f} | {bw:.1f} |")
    return 0


if __name__ == "__main__":
    mode, paths = sys.argv[1], sys.argv[2:]
    sys.exit(1 if {"ids": ids, "timing": timing, "comm": comm}[mode](paths) else 0)
