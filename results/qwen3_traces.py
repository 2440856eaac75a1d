"""Load qwen3-mpi HDF5 traces into pandas (schema 2, and schema 1 files; docs/trace-schema.md).

    import qwen3_traces as qt
    t = qt.load("results/runs/job.h5")       # t.meta (dict), t.summary (dict), t.events (DataFrame)
    runs = qt.load_folder("results/runs")    # one row per file: model, ranks, chunk, sync, TTFT, ...

t.events holds every rank's spans in one table: a `rank` column, `kind` and `thread` as names,
`label` (the kind, with each Wait named by what it waits for), times in seconds (`start_s`,
`duration_s`). qt.kv_sync_spans(t) splits each KV-sync span into waiting for the peers and
moving bytes; qt.decode_steps(t) says where each decode step's time went on each rank
(compute, send, receive, waiting); qt.describe(t) is a one-line title of the run.
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


# Root attributes that are lists: arrays since schema 2, JSON strings in schema 1.
LIST_ATTRS = ("layer_split", "chunk_lengths", "hostnames", "device_names")


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def _enum_names(dataset, field):
    mapping = h5py.check_enum_dtype(dataset.dtype[field]) or {}
    return {code: name for name, code in mapping.items()}


def load(path):
    """One trace: root attributes, /summary, and every rank's spans (times in seconds)."""
    with h5py.File(path, "r") as f:
        meta = {k: _text(v) for k, v in f.attrs.items()}
        for key in ("model_config", "run_args"):
            if key in meta:
                meta[key] = json.loads(meta[key])
        for key in LIST_ATTRS:
            if isinstance(meta.get(key), str):      # schema 1: a JSON string
                meta[key] = json.loads(meta[key])
            elif key in meta:                        # schema 2: an HDF5 array
                meta[key] = [_text(v) for v in meta[key].tolist()]
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
            df["rank"] = int(rank)                   # schema 1 files have no rank column
            frames.append(df)
    events = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(events):
        events["start_s"] = events["t_start_ns"] / 1e9
        events["duration_s"] = (events["t_end_ns"] - events["t_start_ns"]) / 1e9
        # a Wait with a peer waits for the first token from it; without, for the KV sync to drain
        wait = events["kind"] == "Wait"
        events["label"] = events["kind"]
        events.loc[wait & (events["peer"] >= 0), "label"] = "Wait: first token"
        events.loc[wait & (events["peer"] < 0), "label"] = "Wait: KV sync drain"
    return Trace(path, meta, summary, per_rank, events)


def describe(trace):
    """A one-line title: model, ranks, prompt and chunks, sync and transport, device."""
    m = trace.meta
    chunks = len(m.get("chunk_lengths", [])) or "?"
    return (f"{m.get('model', '?')}: {m.get('world_size', '?')} ranks, {m.get('prompt_tokens', '?')} tokens "
            f"in {chunks} chunks, {m.get('sync_strategy', '?')} over {m.get('transport', '?')}, "
            f"{m.get('device', '?')} {m.get('dtype', '')}")


def load_folder(folder):
    """One row per trace file in `folder` (failed runs included, marked by status)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*.h5"))):
        t = load(path)
        rows.append({
            "file": os.path.basename(path),
            "status": t.meta.get("status"),
            "model": t.meta.get("model"),
            "ranks": int(t.meta.get("world_size", 0)),
            "chunk": int(t.meta.get("chunk_size", 0)),
            "chunks": len(t.meta.get("chunk_lengths", [])) or np.nan,
            "sync": t.meta.get("sync_strategy"),
            "transport": t.meta.get("transport"),
            "prompt_tokens": int(t.meta.get("prompt_tokens", 0)),
            "ttft_s": t.summary.get("ttft_s", np.nan),
            # the chunk cost model's prefill time for the run's chunks (traces before it: none)
            "predicted_ttft_s": float(t.meta.get("predicted_ttft_s", np.nan)),
            "prefill_tokens_per_s": t.summary.get("prefill_tokens_per_s", np.nan),
            "decode_tokens_per_s": t.summary.get("decode_tokens_per_s", np.nan),
            "max_exposed_sync_s": t.per_rank["exposed_sync_s"].max() if len(t.per_rank) else np.nan,
            # traces from before `--decode` (issue 18) decoded redundantly and have no attribute
            "decode_mode": t.meta.get("decode_mode", "redundant"),
            "device": (t.meta.get("device_names") or [t.meta.get("device")])[0],
            "new_tokens": int(t.meta.get("new_tokens", 0)),
            "decode_ms_per_token_median": t.summary.get("decode_ms_per_token_median", np.nan),
        })
    return pd.DataFrame(rows)


def kv_sync_spans(trace):
    """KV-sync spans, each split into waiting for the peers (`wait_s`) and moving bytes
    (`move_s`), with the bandwidth over the moving part (`gb_per_s`).

    Every rank takes part in every sync call, in the same order, so the n-th KvSync span of
    step s is the same call on every rank (`call`). A collective call moves bytes only once its
    last rank has arrived: the time before that is waiting (the span's start to the latest
    start of the call on any rank), the rest is moving. (With `ipc` a call only queues pushes
    and waits for no peer: read its `duration_s`.)"""
    ev = trace.events
    kv = ev[ev["kind"] == "KvSync"].sort_values(["rank", "t_start_ns"]).copy()
    if not len(kv):
        return kv.assign(call=[], wait_s=[], move_s=[], gb_per_s=[])
    kv["call"] = kv.groupby(["rank", "step"]).cumcount()
    last_in = kv.groupby(["step", "call"])["t_start_ns"].transform("max")
    moving_from = np.maximum(last_in, kv["t_start_ns"])
    kv["wait_s"] = (moving_from - kv["t_start_ns"]) / 1e9
    kv["move_s"] = (kv["t_end_ns"] - moving_from).clip(lower=0) / 1e9
    kv["gb_per_s"] = kv["bytes"] / kv["move_s"].clip(lower=1e-9) / 1e9
    return kv


def handoffs(trace):
    """One row per hidden-state hand-off of the prefill: chunk, `from`/`to` rank, `bytes`, when
    the sender's last layer of the chunk ended (`sender_done_s`: its GPU-timed span where the
    trace has one, else the compute thread's), when the receiver started and ended waiting
    (`recv_start_s`, `recv_end_s`), and the hop's `latency_s` = `recv_end_s` − `sender_done_s`:
    the copy off the sender's GPU and the message (host path: the copy onto the receiver's GPU
    is queued after the receive, so it delays the receiver's first layer instead), or one
    copy-engine push into the receiver's GPU memory and an 8-byte message (ipc), or a copy into
    the sender's GPU buffer, MPI from GPU memory to GPU memory and the message (device). Only where the receiver was already
    waiting when the sender finished; NaN where it came later (its wait then says nothing).
    The two ends are on two ranks' clocks, whose common origin is a barrier: their skew (µs on
    an idle node, up to ms with more ranks than cores) is in every latency.

    The latency splits into `copy_s` (the sender's `HiddenCopy` span on the GPU, from the
    layer's end to the copy's: NaN in traces without it, and on the CPU), `post_s` (from the
    copy's end, or the layer's, to the sender posting its `Send`: when its compute thread saw
    the copy had passed) and `message_s` (from the post to the receiver's end of wait)."""
    ev = trace.events
    cols = ["chunk", "from", "to", "bytes", "sender_done_s", "recv_start_s", "recv_end_s", "latency_s",
            "copy_s", "post_s", "message_s"]
    if not len(ev):
        return pd.DataFrame(columns=cols)
    layers = ev[ev["kind"] == "LayerCompute"]
    gpu = layers[layers["thread"] == "GpuStream"]
    layers = gpu if len(gpu) else layers[layers["thread"] == "Compute"]
    done = layers.groupby(["rank", "chunk"])["t_end_ns"].max()
    copied = ev[ev["kind"] == "HiddenCopy"].groupby(["rank", "chunk"])["t_end_ns"].max()
    posted = ev[(ev["kind"] == "Send") & (ev["thread"] == "Compute")].groupby(["rank", "chunk"])["t_start_ns"].min()
    rows = []
    for r in ev[(ev["kind"] == "Recv") & (ev["thread"] == "Compute")].itertuples():
        sent = done.get((r.peer, r.chunk))
        if sent is None:
            continue
        waiting = r.t_start_ns <= sent
        copy_end = copied.get((r.peer, r.chunk), np.nan)
        post = posted.get((r.peer, r.chunk), np.nan)
        after_copy = sent if np.isnan(copy_end) else copy_end
        rows.append({
            "chunk": r.chunk, "from": r.peer, "to": r.rank, "bytes": r.bytes,
            "sender_done_s": sent / 1e9, "recv_start_s": r.t_start_ns / 1e9, "recv_end_s": r.t_end_ns / 1e9,
            "latency_s": (r.t_end_ns - sent) / 1e9 if waiting else np.nan,
            "copy_s": (copy_end - sent) / 1e9 if waiting else np.nan,
            "post_s": (post - after_copy) / 1e9 if waiting else np.nan,
            "message_s": (r.t_end_ns - post) / 1e9 if waiting else np.nan,
        })
    return pd.DataFrame(rows, columns=cols)


# The spans of one decode step on a rank (docs/trace-schema.md), by the column they fill.
DECODE_PARTS = {"DecodeStep": "compute_s", "DecodeSend": "send_s", "DecodeRecv": "recv_s", "DecodeWait": "wait_s"}


def decode_steps(trace):
    """One row per (rank, decode step): where that step's time went on that rank, in seconds.

    `compute_s` is the rank's `DecodeStep` span (redundant decode: the whole step, every layer,
    the head and the sampler; pipelined decode: its own layers, with the embedding on rank 0 and
    the head and sampler on the last rank); `send_s` (`DecodeSend`: the hidden state to the next
    rank), `recv_s` (`DecodeRecv`: waiting for it from the previous one) and `wait_s`
    (`DecodeWait`: the broadcast of the step's token from the last rank) are 0 in redundant
    decode. The spans of a step on a rank do not overlap, so `step_s`, their sum, is the step's
    wall time on that rank. Step s makes token s (the first token, 0, comes from prefill), so a
    run of N new tokens has steps 1..N-1. Empty (with these columns) without decode spans."""
    cols = ["rank", "step", *DECODE_PARTS.values(), "step_s"]
    ev = trace.events
    if not len(ev):
        return pd.DataFrame(columns=cols)
    spans = ev[ev["kind"].isin(list(DECODE_PARTS))]
    steps = (spans.pivot_table(index=["rank", "step"], columns="kind", values="duration_s",
                               aggfunc="sum", fill_value=0.0)
             .rename(columns=DECODE_PARTS)
             .reindex(columns=list(DECODE_PARTS.values()), fill_value=0.0))
    steps["step_s"] = steps.sum(axis=1)
    steps.columns.name = None
    return steps.reset_index()[cols]
