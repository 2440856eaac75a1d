"""Load qwen3-mpi HDF5 traces into pandas.

    import qwen3_traces as qt
    t = qt.load("results/runs/job.h5")       # t.meta (dict), t.summary (dict), t.events (DataFrame)
    runs = qt.load_folder("results/runs")    # one row per file: ranks, chunk, sync, TTFT, ...
"""
import glob
import json
import os
from dataclasses import dataclass

import h5py
import numpy as np
import pandas as pd


@dataclass
class Trace:
    path: str
    meta: dict
    summary: dict
    per_rank: pd.DataFrame
    events: pd.DataFrame


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def _enum_names(dataset, field):
    mapping = h5py.check_enum_dtype(dataset.dtype[field]) or {}
    return {code: name for name, code in mapping.items()}


def load(path):
    """One trace: root attributes, /summary, and every rank's spans (times in seconds)."""
    with h5py.File(path, "r") as f:
        meta = {k: _text(v) for k, v in f.attrs.items()}
        for key in ("layer_split", "model_config", "run_args"):
            if key in meta:
                meta[key] = json.loads(meta[key])
        summary, per_rank = {}, pd.DataFrame()
        if "summary" in f:
            summary = {k: float(v) for k, v in f["summary"].attrs.items()}
            per_rank = pd.DataFrame({k: f["summary"][k][:] for k in f["summary"].keys()})
            per_rank.index.name = "rank"
        frames = []
        for rank in sorted(f["ranks"].keys(), key=int) if "ranks" in f else []:
            ds = f["ranks"][rank]["events"]
            df = pd.DataFrame(ds[:])
            df["kind"] = df["kind"].map(_enum_names(ds, "kind"))
            df["thread"] = df["thread"].map(_enum_names(ds, "thread"))
            df["rank"] = int(rank)
            frames.append(df)
    events = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(events):
        events["start_s"] = events["t_start_ns"] / 1e9
        events["duration_s"] = (events["t_end_ns"] - events["t_start_ns"]) / 1e9
    return Trace(path, meta, summary, per_rank, events)


def load_folder(folder):
    """One row per trace file in `folder` (failed runs included, marked by status)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*.h5"))):
        t = load(path)
        rows.append({
            "file": os.path.basename(path),
            "status": t.meta.get("status"),
            "ranks": int(t.meta.get("world_size", 0)),
            "chunk": int(t.meta.get("chunk_size", 0)),
            "sync": t.meta.get("sync_strategy"),
            "transport": t.meta.get("transport"),
            "prompt_tokens": int(t.meta.get("prompt_tokens", 0)),
            "ttft_s": t.summary.get("ttft_s", np.nan),
            "prefill_tokens_per_s": t.summary.get("prefill_tokens_per_s", np.nan),
            "decode_tokens_per_s": t.summary.get("decode_tokens_per_s", np.nan),
            "max_exposed_sync_s": t.per_rank["exposed_sync_s"].max() if len(t.per_rank) else np.nan,
        })
    return pd.DataFrame(rows)


def kv_sync_spans(trace):
    """KV-sync spans with their bandwidth (bytes moved by this rank over the span's time)."""
    ev = trace.events
    kv = ev[ev["kind"] == "KvSync"].copy()
    kv["gb_per_s"] = kv["bytes"] / kv["duration_s"].clip(lower=1e-9) / 1e9
    return kv
