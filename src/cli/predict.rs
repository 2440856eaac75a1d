//! `qwen3-mpi predict`: the chunk cost model's prefill for a model and rank counts, with no
//! MPI and no GPU: which chunks the job would take and the TTFT it predicts, against one rank.
//! What a user sizes a job with before asking for nodes, and what `results/bench/NOTES.md`'s
//! predicted scaling tables are made of.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::model::Qwen3Config;
use crate::schedule::pipeline::ideal_speedup;
use crate::schedule::{plan_chunks, Chunking, DeviceRates, HopCost, JobCost, LayerSplit};
use crate::transport::HiddenArg;
use crate::units::ms;

/// Which rates the prediction uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RatesArg {
    /// A GPU's (fitted on an H200, bf16 weights).
    Gpu,
    /// CPU cores' (f32 weights).
    Cpu,
}

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// The model's config.json, or the checkpoint folder holding it.
    #[arg(long, value_name = "PATH")]
    pub config: PathBuf,
    /// Prompt tokens.
    #[arg(long, value_name = "N", default_value_t = 16384, value_parser = clap::value_parser!(u64).range(1..))]
    pub tokens: u64,
    /// Rank counts (one GPU each), e.g. `1,2,4,8`.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "N,N,...",
        default_value = "1,2,4,8"
    )]
    pub ranks: Vec<usize>,
    /// The device class's rates.
    #[arg(long, value_enum, value_name = "CLASS", default_value = "gpu")]
    pub rates: RatesArg,
    /// The hidden states' path between GPUs (`auto` counted as `ipc`, what it takes on one node).
    #[arg(long, value_enum, value_name = "HOW", default_value = "auto")]
    pub hidden_transport: HiddenArg,
    /// Prompt tokens per chunk, as the job's flag (default: the model's choice).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_size: Option<u64>,
    /// How the prompt is cut into chunks.
    #[arg(long, value_enum, value_name = "HOW", default_value = "uniform")]
    pub chunking: Chunking,
}

/// The table: one row per rank count, speed-ups against the one-rank prediction.
pub fn predict_table(args: &PredictArgs) -> Result<String> {
    let path = match args.config.is_dir() {
        true => args.config.join("config.json"),
        false => args.config.clone(),
    };
    let cfg = Qwen3Config::from_file(&path)?;
    let tokens = usize::try_from(args.tokens).context("--tokens: too large")?;
    if tokens > cfg.max_position_embeddings {
        bail!(
            "--tokens {tokens}: more than {}'s max_position_embeddings ({})",
            path.display(),
            cfg.max_position_embeddings
        );
    }
    if let Some(&bad) = args.ranks.iter().find(|&&r| r == 0 || r > cfg.num_hidden_layers) {
        bail!(
            "--ranks {bad}: each rank needs at least one of the {} layers",
            cfg.num_hidden_layers
        );
    }
    let (rates, hop) = match (args.rates, args.hidden_transport) {
        (RatesArg::Cpu, _) => (DeviceRates::CPU, HopCost::CPU),
        (RatesArg::Gpu, HiddenArg::Host) => (DeviceRates::GPU, HopCost::GPU_HOST),
        (RatesArg::Gpu, HiddenArg::Ipc | HiddenArg::Auto) => (DeviceRates::GPU, HopCost::GPU_IPC),
        (RatesArg::Gpu, HiddenArg::Device) => (DeviceRates::GPU, HopCost::GPU_MPI),
    };
    let dtype_bytes = match args.rates {
        RatesArg::Gpu => 2,
        RatesArg::Cpu => 4,
    };
    let cost = JobCost::new(&cfg, rates, hop, dtype_bytes);
    let given = args.chunk_size.map(|c| usize::try_from(c).unwrap_or(usize::MAX));
    let plan = |ranks: usize| -> Result<_> {
        let split = LayerSplit::even(cfg.num_hidden_layers, ranks)?;
        Ok(plan_chunks(tokens, &split, &cost, args.chunking, given))
    };
    // the baseline: one rank, the prompt as the job would cut it there
    let one = plan(1)?.predicted.ttft_s;
    let mut out = format!(
        "{}: hidden {}, {} layers; {tokens} tokens; {}, hidden states over {}\n\
         | ranks | chunks | predicted TTFT | speed-up over 1 rank | efficiency | ideal R·C/(C+R−1) |\n\
         |---|---|---|---|---|---|\n",
        path.display(),
        cfg.hidden_size,
        cfg.num_hidden_layers,
        rates.name,
        hop.name
    );
    for &ranks in &args.ranks {
        let p = plan(ranks)?;
        let speedup = one / p.predicted.ttft_s;
        out.push_str(&format!(
            "| {ranks} | {} x {} | {} | {speedup:.2}x | {:.2} | {:.2}x |\n",
            p.chunks.len(),
            p.size,
            ms(p.predicted.ttft_s),
            speedup / ranks as f64,
            ideal_speedup(ranks, p.chunks.len())
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::shapes::qwen3_8b;

    fn configs(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("configs")
            .join(name)
    }

    fn args(config: PathBuf, ranks: Vec<usize>) -> PredictArgs {
        PredictArgs {
            config,
            tokens: 16384,
            ranks,
            rates: RatesArg::Gpu,
            hidden_transport: HiddenArg::Auto,
            chunk_size: None,
            chunking: Chunking::Uniform,
        }
    }

    /// The repo's published shapes read as the job reads a checkpoint's config.
    #[test]
    fn the_published_shapes_read() {
        let read = Qwen3Config::from_file(&configs("qwen3-8b.json")).unwrap();
        // the shape is the tests' Qwen3-8B; the file also names its dtype and end token
        assert_eq!(read.checkpoint_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(read.eos_token_ids, vec![151645]);
        let shape = Qwen3Config {
            checkpoint_dtype: None,
            eos_token_ids: vec![],
            ..read
        };
        assert_eq!(shape, qwen3_8b());
        for name in ["qwen3-0.6b.json", "qwen3-32b.json", "qwen3-30b-a3b.json"] {
            Qwen3Config::from_file(&configs(name)).unwrap();
        }
    }

    /// The table's rows are `plan_chunks` on even splits, and one rank is its own baseline.
    #[test]
    fn rows_follow_the_chunk_choice_and_one_rank_is_the_baseline() {
        let table = predict_table(&args(configs("qwen3-8b.json"), vec![1, 4])).unwrap();
        let cost = JobCost::new(&qwen3_8b(), DeviceRates::GPU, HopCost::GPU_IPC, 2);
        let four = plan_chunks(
            16384,
            &LayerSplit::even(36, 4).unwrap(),
            &cost,
            Chunking::Uniform,
            None,
        );
        assert!(table.contains("| 1 | 1 x 16384 |"), "{table}");
        assert!(table.contains("| 1.00x | 1.00 |"), "{table}");
        let row = format!(
            "| 4 | {} x {} | {} |",
            four.chunks.len(),
            four.size,
            ms(four.predicted.ttft_s)
        );
        assert!(table.contains(&row), "{row} not in\n{table}");
    }

    #[test]
    fn bad_rank_counts_and_lengths_name_the_flag() {
        let e = predict_table(&args(configs("qwen3-8b.json"), vec![2, 37]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--ranks 37:"), "{e}");
        let mut long = args(configs("qwen3-8b.json"), vec![2]);
        long.tokens = 1 << 20;
        let e = predict_table(&long).unwrap_err().to_string();
        assert!(e.starts_with("--tokens 1048576:"), "{e}");
        let e = predict_table(&args(configs("missing"), vec![2])).unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
    }
}
