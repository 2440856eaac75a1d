#!/usr/bin/env python3
"""NCCL all_gather through PyTorch on the same bytes per rank as `qwen3-mpi bench-comm`, as the
baseline the KV sync is held to. Run with torchrun --nproc-per-node N; rank 0 writes JSON lines.

  torchrun --nproc-per-node 2 nccl_allgather.py --sizes 1048576,4194304 --out FILE.json
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", required=True, help="bytes per rank, comma-separated")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dist.init_process_group("nccl")
    rank, n = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        mine = torch.full((size,), rank, dtype=torch.uint8, device="cuda")
        every = torch.empty(size * n, dtype=torch.uint8, device="cuda")
        times = []
        for i in range(args.iters + 3):
            dist.barrier()
            torch.cuda.synchronize()
            t = time.perf_counter()
            dist.all_gather_into_tensor(every, mine)
            torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t)
        med = statistics.median(times)
        algbw = n * size / med / 1e9
        rows.append({"transport": "torch-nccl-baseline", "sync": "allgather", "ranks": n, "bytes_per_rank": size,
                     "median_s": med, "busbw_gbs": algbw * (n - 1) / n})
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(rows, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
