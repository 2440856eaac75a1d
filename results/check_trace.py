#!/usr/bin/env python3
"""Checks one trace file with h5py against the layout contract and the run's --json report.

    python3 results/check_trace.py TRACE.h5 REPORT.json

Exits non-zero with the first violation. The test suite runs it on a 3-rank CPU job.
"""
import json
import sys
from pathlib import Path

import h5py
import numpy as np

ROOT_ATTRS = ["schema_version", "status", "command_line", "git_commit", "start_time", "world_size", "hostnames",
              "model", "model_config", "dtype", "device", "device_names", "chunk_size", "layer_split",
              "sync_strategy", "transport", "hidden_transport", "prompt_tokens", "new_tokens", "mpi_library_version",
              "chunk_choice", "predicted_ttft_s"]
SUMMARY_ATTRS = ["ttft_s", "prefill_s", "prefill_tokens_per_s", "decode_s", "decode_tokens_per_s"]
SUMMARY_SETS = ["kv_bytes_sent", "kv_bytes_received", "exposed_sync_s"]
EVENT_FIELDS = ["rank", "kind", "thread", "layer", "chunk", "step", "peer", "bytes", "t_start_ns", "t_end_ns"]


def main():
    path, report_path = sys.argv[1], sys.argv[2]
    report = json.loads(open(report_path).read().strip().splitlines()[-1])
    with h5py.File(path, "r") as f:
        missing = [a for a in ROOT_ATTRS if a not in f.attrs]
        assert not missing, f"root attributes missing: {missing}"
        assert f.attrs["status"] == "ok", f.attrs["status"]
        ranks = int(f.attrs["world_size"])
        assert all(a in f["summary"].attrs for a in SUMMARY_ATTRS), dict(f["summary"].attrs)
        for name in SUMMARY_SETS:
            assert f["summary"][name].shape == (ranks,), name
        assert np.isclose(f["summary"].attrs["ttft_s"], report["ttft_s"])
        assert np.isclose(f.attrs["predicted_ttft_s"], report["predicted_ttft_s"]) and f.attrs["predicted_ttft_s"] > 0
        assert f.attrs["chunk_choice"] == report["chunk_choice"], f.attrs["chunk_choice"]
        assert list(f["output/generated_ids"][:]) == report["generated_ids"]
        assert len(f["output/prompt_ids"][:]) == report["prompt_tokens"]
        assert f["output/prefill_logits"].dtype == np.float32
        assert f.attrs["schema_version"] == 2, f.attrs["schema_version"]
        split = [int(n) for n in f.attrs["layer_split"]]            # arrays, not JSON strings
        assert split == report["layer_split"], split
        lengths = [int(n) for n in f.attrs["chunk_lengths"]]
        assert sum(lengths) == report["prompt_tokens"] and len(lengths) == int(f.attrs["chunks"]), lengths
        assert len(f.attrs["hostnames"]) == ranks and len(f.attrs["device_names"]) == ranks
        chunks = len(lengths)
        seen, first = set(), 0
        for rank in range(ranks):
            ds = f[f"ranks/{rank}/events"]
            assert list(ds.dtype.names) == EVENT_FIELDS, ds.dtype.names
            kinds = {v: k for k, v in h5py.check_enum_dtype(ds.dtype["kind"]).items()}
            ev = ds[:]
            assert (ev["rank"] == rank).all(), f"rank column of /ranks/{rank}/events"
            names = np.array([kinds[k] for k in ev["kind"]])
            owned = range(first, first + split[rank])
            first += split[rank]
            for e in ev[names == "LayerCompute"]:
                assert e["layer"] in owned, f"rank {rank} computed layer {e['layer']}"
                key = (int(e["layer"]), int(e["chunk"]))
                assert key not in seen, f"{key} computed twice"
                seen.add(key)
            if ranks > 1:
                assert (names == "KvSync").any(), f"rank {rank}: no KV sync span"
            for thread in np.unique(ev["thread"]):
                mine = np.sort(ev[ev["thread"] == thread], order="t_start_ns")
                assert (mine["t_end_ns"] >= mine["t_start_ns"]).all()
                assert (mine["t_start_ns"][1:] >= mine["t_end_ns"][:-1]).all(), f"rank {rank} thread {thread}: overlap"
        assert len(seen) == sum(split) * chunks, f"{len(seen)} layer spans, expected {sum(split) * chunks}"
        assert f.attrs["hidden_transport"] == report["hidden_transport"], f.attrs["hidden_transport"]
    # every chunk's hand-off into every rank after the first, paired with its sender's last layer
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import qwen3_traces
    trace = qwen3_traces.load(path)
    hops = qwen3_traces.handoffs(trace)
    hidden = trace.meta["model_config"]["hidden_size"]
    bytes_per = 4 if report["dtype"] == "f32" else 2
    assert len(hops) == chunks * (ranks - 1), f"{len(hops)} hand-offs, expected {chunks * (ranks - 1)}"
    assert (hops["to"] == hops["from"] + 1).all(), hops
    assert sorted(hops["bytes"]) == sorted(n * hidden * bytes_per for n in lengths for _ in range(ranks - 1)), hops
    # (latency compares two ranks' clocks, which share an origin only to the barrier's skew)
    assert (hops["recv_end_s"] >= hops["recv_start_s"]).all(), hops
    print(f"{path}: layout ok, {ranks} ranks, {len(seen)} (layer, chunk) spans, {len(hops)} hand-offs")


if __name__ == "__main__":
    main()
