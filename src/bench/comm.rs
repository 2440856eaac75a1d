//! `qwen3-mpi bench-comm`: the KV sync alone, call by call. Each call has the shape prefill
//! makes: every rank contributes one layer's K/V for `bytes_per_rank / position_bytes`
//! positions of one chunk and ends with every rank's block, moved by the job's own transports
//! (`src/sync`), and checked: every rank's block must arrive whole. Beside them, the MPI
//! library's plain `MPI_Allgather` of the same bytes on host memory is timed as a baseline,
//! and where `--transport host` runs through the node-shared window (one node), the host
//! allgather through MPI that it replaces (row `host-mpi`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use mpi::collective::SystemOperation;
use mpi::traits::*;

use super::comm_table::{format_rows, CommRow};
use crate::cli::environment::Environment;
use crate::device::{select_device, select_dtype, DTypeArg, DeviceArg};
use crate::model::{KvCache, Qwen3Config};
use crate::schedule::KvSyncCall;
use crate::sync::{
    mpi_host_allgather, one_block_per_rank, open_transport, shared_window, KvTransport, SyncStats,
    SyncStrategy,
};
use crate::trace::TraceFile;
use crate::transport::{
    plan_transport, HiddenArg, MpiEnv, Site, TransportArg, TransportPlan, TransportSettings,
};

#[derive(Debug, Clone, clap::Args)]
pub struct CommBenchArgs {
    /// Bytes of K/V each rank contributes per call, e.g. `256KiB,1MiB,4MiB,16MiB`.
    #[arg(long, value_name = "BYTES,...", value_delimiter = ',', default_value = "256KiB,1MiB,4MiB,16MiB,64MiB", value_parser = crate::cli::args::parse_bytes)]
    pub sizes: Vec<u64>,

    /// Timed calls per size (after the warm-up calls).
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,

    /// Untimed calls per size before the timed ones (connections, first-use allocations).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub warmup: u64,

    /// KV sync strategies to time, as `run --sync` takes them.
    #[arg(
        long,
        value_name = "SYNC,...",
        value_enum,
        value_delimiter = ',',
        default_value = "allgather,ring"
    )]
    pub sync: Vec<SyncStrategy>,

    /// Transports to time, as `run --transport` takes them (one that cannot run here is skipped
    /// with the reason).
    #[arg(
        long,
        value_name = "TRANSPORT,...",
        value_enum,
        value_delimiter = ',',
        default_value = "auto"
    )]
    pub transport: Vec<TransportArg>,

    /// K/V heads of the model whose blocks are moved (default: Qwen3-8B's).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub kv_heads: usize,

    /// Size of one head of the model whose blocks are moved (default: Qwen3-8B's).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub head_dim: usize,

    /// Precision of the K/V blocks (default: f32 on CPU, bf16 on GPU).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,

    /// Where the KV cache lives, as for `run`.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,

    /// HDF5 file for the table (`/comm`, one row per transport, sync and size).
    #[arg(long, value_name = "FILE.h5")]
    pub trace: Option<PathBuf>,

    /// Print the rows as one JSON line after the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs every (transport, sync, size) on every rank; rank 0 prints and writes the table. Each
/// transport and sync is planned as `run` plans it (`transport::plan_transport`), from the same
/// environment overrides.
pub fn run_comm_bench(args: &CommBenchArgs, env: &MpiEnv) -> Result<Vec<CommRow>> {
    let (rank, ranks) = (env.rank, env.size);
    let device = select_device(args.device, env.local_rank, env.local_size)?;
    let dtype = select_dtype(args.dtype, &device);
    let settings = Environment::read()?.transport;
    let runs = planned_runs(
        args,
        &Site::detect(device.is_cuda(), env, &settings),
        &settings,
        rank,
    );
    let cfg = block_config(args);
    let position_bytes = 2 * args.kv_heads * args.head_dim * dtype.size_in_bytes();
    let mut rows = Vec::new();
    for &bytes in &args.sizes {
        let positions = (bytes as usize / position_bytes).max(1);
        let bytes_per_rank = positions * position_bytes;
        let call = one_block_per_rank(ranks, positions);
        // IPC-capable memory where any planned transport needs it
        let ipc = runs.iter().any(|(_, plan)| plan.ipc_capable_cache);
        let kv = KvCache::with_memory(&cfg, ranks * positions, dtype, &device, ipc)?;
        let kv = Arc::new(kv);
        let mine = vec![rank as u8; bytes_per_rank];
        let mut all = vec![0u8; bytes_per_rank * ranks];
        let host = time_calls(env, args, || {
            env.world.all_gather_into(&mine[..], &mut all[..]);
            Ok(())
        })?;
        rows.push(CommRow::from_times(
            "mpi-host-baseline",
            "allgather",
            ranks,
            bytes_per_rank,
            &host,
        ));
        for (strategy, plan) in &runs {
            let (sync, transport) = open_transport(env, *strategy, plan, kv.clone(), positions)?;
            let window = sync.name() == shared_window::NAME;
            let (name, sync_name) = (transport.name(), strategy.name());
            let times = time_transport(env, args, sync, &kv, &call, positions)
                .with_context(|| format!("{name} {sync_name}"))?;
            rows.push(CommRow::from_times(
                name,
                sync_name,
                ranks,
                bytes_per_rank,
                &times,
            ));
            if window {
                // the path the window replaces, beside it (`QWEN3_MPI_HOST_PATH=mpi`)
                let mpi = mpi_host_allgather(env.duplicate(), rank, kv.clone(), plan.stage_piece_bytes)?;
                let times = time_transport(env, args, mpi, &kv, &call, positions)
                    .with_context(|| format!("{HOST_MPI_ROW} {sync_name}"))?;
                rows.push(CommRow::from_times(
                    HOST_MPI_ROW,
                    sync_name,
                    ranks,
                    bytes_per_rank,
                    &times,
                ));
            }
        }
    }
    if rank == 0 {
        print!("{}", format_rows(&rows));
        if args.json {
            println!("{}", serde_json::to_string(&rows)?);
        }
        if let Some(path) = &args.trace {
            write_table(path, &rows, env, &device, dtype)?;
        }
    }
    Ok(rows)
}

/// One plan per (sync, transport) asked for, in order, each planned once (`auto` may name a
/// transport also asked for by name); one that cannot run here is skipped, rank 0 saying why.
fn planned_runs(
    args: &CommBenchArgs,
    site: &Site,
    settings: &TransportSettings,
    rank: usize,
) -> Vec<(SyncStrategy, TransportPlan)> {
    let mut runs: Vec<(SyncStrategy, TransportPlan)> = Vec::new();
    for &asked in &args.transport {
        for &sync in &args.sync {
            let (strategy, arg) = sync.with_transport(asked);
            match plan_transport(
                arg,
                HiddenArg::Host,
                strategy == SyncStrategy::Ring,
                site,
                settings,
            ) {
                Ok(plan)
                    if runs
                        .iter()
                        .any(|(s, p)| *s == strategy && p.transport == plan.transport) => {}
                Ok(plan) => runs.push((strategy, plan)),
                Err(why) if rank == 0 => crate::eprint_line!(
                    "qwen3-mpi: bench-comm: skipping --transport {} --sync {}: {why:#}",
                    arg.name(),
                    strategy.name()
                ),
                Err(_) => {}
            }
        }
    }
    runs
}

/// Row of the host allgather through MPI's own copy, timed beside the shared window it is
/// replaced by (on a GPU the staged pipeline, on the CPU one `MPI_Allgatherv`).
pub const HOST_MPI_ROW: &str = "host-mpi";

/// Times `call` through `sync` (see [`time_calls`]), checks that every rank's block arrived,
/// and closes the transport. Collective.
fn time_transport(
    env: &MpiEnv,
    args: &CommBenchArgs,
    mut sync: Box<dyn KvTransport>,
    kv: &KvCache,
    call: &KvSyncCall,
    positions: usize,
) -> Result<Vec<f64>> {
    let ranks = env.size;
    prepare_blocks(kv, env.rank, ranks, positions)?;
    let times = time_calls(env, args, || {
        sync.run_call(call, &mut SyncStats::default())?;
        sync.finish() // IPC pushes return before they land
    })?;
    check_blocks(kv, ranks, positions).context("moved the wrong bytes")?;
    sync.close()?;
    Ok(times)
}

/// Times `warmup + iters` calls, each started together after a barrier; returns the slowest
/// rank's time of every timed call.
fn time_calls(env: &MpiEnv, args: &CommBenchArgs, mut call: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(args.iters as usize);
    for i in 0..args.warmup + args.iters {
        env.world.barrier();
        let started = Instant::now();
        call()?;
        let mine = started.elapsed().as_secs_f64();
        let mut slowest = 0f64;
        env.world
            .all_reduce_into(&mine, &mut slowest, SystemOperation::max());
        if i >= args.warmup {
            times.push(slowest);
        }
    }
    Ok(times)
}

/// This rank's block holds rank + 1 everywhere, the others zeros (so a transport that moves
/// nothing, or the wrong block, is caught).
fn prepare_blocks(kv: &KvCache, rank: usize, ranks: usize, positions: usize) -> Result<()> {
    let shape = kv.block(0, 0, positions)?.shape().clone(); // (P, 2, KVH, D)
    for q in 0..ranks {
        let value = if q == rank { q as f32 + 1.0 } else { 0.0 };
        let block =
            candle_core::Tensor::full(value, shape.clone(), kv.storage().device())?.to_dtype(kv.dtype())?;
        kv.write_block(0, q * positions, &block)?;
    }
    kv.storage().device().synchronize()?; // the cache is outside event tracking on a GPU
    Ok(())
}

/// Every rank's block arrived whole.
fn check_blocks(kv: &KvCache, ranks: usize, positions: usize) -> Result<()> {
    for q in 0..ranks {
        let values = kv
            .block(0, q * positions, positions)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        if let Some(bad) = values.iter().position(|&v| v != q as f32 + 1.0) {
            anyhow::bail!("rank {q}'s block differs at element {bad}: {}", values[bad]);
        }
    }
    Ok(())
}

/// A one-layer model shape whose cache holds the blocks.
fn block_config(args: &CommBenchArgs) -> Qwen3Config {
    Qwen3Config {
        hidden_size: args.kv_heads * args.head_dim,
        intermediate_size: 1,
        num_hidden_layers: 1,
        num_attention_heads: args.kv_heads,
        num_key_value_heads: args.kv_heads,
        head_dim: args.head_dim,
        rms_norm_eps: 1e-6,
        rope_theta: 1e6,
        max_position_embeddings: usize::MAX,
        tie_word_embeddings: true,
        vocab_size: 1,
        checkpoint_dtype: None,
        eos_token_ids: Vec::new(),
        moe: None,
    }
}

fn write_table(
    path: &std::path::Path,
    rows: &[CommRow],
    env: &MpiEnv,
    device: &candle_core::Device,
    dtype: candle_core::DType,
) -> Result<()> {
    let trace = TraceFile::create(path, None).with_context(|| format!("--trace {}", path.display()))?;
    trace.attr_str("kind", "bench-comm")?;
    trace.attr_str("command_line", &std::env::args().collect::<Vec<_>>().join(" "))?;
    trace.attr_u64("world_size", env.size as u64)?;
    trace.attr_str("device", &crate::device::device_name(device))?;
    trace.attr_str("dtype", &format!("{dtype:?}").to_lowercase())?;
    trace.attr_str("mpi_library_version", &MpiEnv::library_version())?;
    trace.attr_str("git_commit", env!("QWEN3_MPI_GIT_COMMIT"))?;
    trace.dataset("comm", rows)?;
    trace.finish("ok")?;
    Ok(())
}
