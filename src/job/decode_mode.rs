//! `--decode`: the one place the job decides how it decodes, from what each mode needs on
//! every rank and what every rank may use, before anything is loaded. Every rank makes the same
//! choice from the same numbers (one gather of the ranks' budgets); rank 0 prints it with its
//! reason, and the trace records both.

use anyhow::{bail, Result};
use candle_core::DType;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use super::memory_plan::{gib, MemoryNeed};
use crate::model::{Qwen3Config, StageParts};
use crate::schedule::{DecodeArg, DecodeMode, LayerSplit};
use crate::units::bytes;

/// How the job decodes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodePlan {
    pub mode: DecodeMode,
    /// One line: what was asked for, what each mode needs per rank and whether it fits.
    pub reason: String,
    /// The most ranks that use one GPU (1 on the CPU, or with a GPU for each rank).
    pub ranks_per_gpu: usize,
}

/// One rank's memory: what each mode needs there, and what it may use (`None`: unknown, not
/// checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankMemory {
    pub redundant: MemoryNeed,
    pub pipeline: MemoryNeed,
    pub available: Option<u64>,
}

impl RankMemory {
    fn fits(&self, need: MemoryNeed) -> bool {
        self.available.is_none_or(|a| need.total() <= a)
    }
}

/// What the model needs in each mode on each rank of `split`, against each rank's budget.
pub fn rank_memory(
    cfg: &Qwen3Config,
    capacity: usize,
    dtype: DType,
    split: &LayerSplit,
    available: &[Option<u64>],
) -> Vec<RankMemory> {
    let last = split.ranks() - 1;
    available
        .iter()
        .enumerate()
        .map(|(rank, &available)| RankMemory {
            redundant: MemoryNeed::redundant(cfg, capacity, dtype),
            pipeline: MemoryNeed::pipeline(cfg, capacity, dtype, split.range(rank), stage_parts(rank, last)),
            available,
        })
        .collect()
}

/// The embedding on rank 0, the final norm and head on the last rank (as in prefill).
pub fn stage_parts(rank: usize, last: usize) -> StageParts {
    StageParts {
        embed: rank == 0,
        head: rank == last,
    }
}

/// Collective, one all-gather: every rank's budget (`--max-memory`, else its share of its
/// device's free memory; `None`: unknown) and how many ranks use its GPU (1 on the CPU), to
/// every rank (index = rank).
pub fn gather_budgets(
    world: &SimpleCommunicator,
    budget: Option<u64>,
    gpu_sharing: usize,
) -> (Vec<Option<u64>>, Vec<usize>) {
    let mut all = vec![0u64; 2 * world.size() as usize];
    world.all_gather_into(
        &[budget.unwrap_or(u64::MAX), gpu_sharing as u64][..],
        &mut all[..],
    );
    all.chunks(2)
        .map(|pair| ((pair[0] != u64::MAX).then_some(pair[0]), pair[1] as usize))
        .unzip()
}

/// The decode mode for `arg`: under `auto` redundant where it fits every rank and no GPU is
/// shared, else pipeline where that fits every rank; an error with the numbers where the mode
/// asked for (or, under `auto`, neither) fits. `source` names the budget (`--max-memory`,
/// `free on the device`). `gpu_sharing[r]`: the ranks that use rank r's GPU (1 on the CPU).
/// Ranks that share a GPU decode pipelined under `auto`: redundant decode would keep a copy of
/// the whole model on that GPU for each of them, and compute every token once for each.
pub fn choose(
    arg: DecodeArg,
    ranks: &[RankMemory],
    source: &str,
    split: &LayerSplit,
    capacity: usize,
    gpu_sharing: &[usize],
) -> Result<DecodePlan> {
    let shared_gpu = gpu_sharing
        .iter()
        .enumerate()
        .find(|(_, &n)| n > 1)
        .map(|(rank, &n)| (rank, n));
    let misfit = |need: fn(&RankMemory) -> MemoryNeed| ranks.iter().position(|r| !r.fits(need(r)));
    let redundant_misfit = misfit(|r| r.redundant);
    let pipeline_misfit = misfit(|r| r.pipeline);
    let budget = |rank: usize| ranks[rank].available.map_or_else(|| "unknown".into(), gib);
    let redundant_no = |rank: usize| {
        let need = ranks[rank].redundant;
        format!(
            "it needs {} to decode redundant (weights {} for all {} layers, which every rank holds, + KV cache {} \
             for {capacity} positions), but {} is {source} on rank {rank}",
            gib(need.total()),
            gib(need.weights),
            split.num_layers(),
            gib(need.kv_cache),
            budget(rank)
        )
    };
    let pipeline_no = |rank: usize| {
        let need = ranks[rank].pipeline;
        let layers = split.range(rank);
        format!(
            "rank {rank} needs {} to decode pipeline (weights {} of its layers {}..{}{}, + KV cache {} of those \
             layers for {capacity} positions), but {} is {source}",
            gib(need.total()),
            gib(need.weights),
            layers.start,
            layers.end,
            stage_extras(rank, split.ranks() - 1),
            gib(need.kv_cache),
            budget(rank)
        )
    };
    let fits = fit_summary(ranks, source, redundant_misfit, pipeline_misfit);
    let mode = match (arg, redundant_misfit, pipeline_misfit) {
        (DecodeArg::Auto, None, None) if shared_gpu.is_some() => DecodeMode::Pipeline,
        (DecodeArg::Redundant, None, _) | (DecodeArg::Auto, None, _) => DecodeMode::Redundant,
        (DecodeArg::Pipeline, _, None) | (DecodeArg::Auto, Some(_), None) => DecodeMode::Pipeline,
        (DecodeArg::Redundant, Some(rank), pipeline) => bail!(
            "--decode redundant: the model does not fit: {}; --decode pipeline {}",
            redundant_no(rank),
            match pipeline {
                None => "fits every rank".to_string(),
                Some(_) => "does not fit either".to_string(),
            }
        ),
        (DecodeArg::Pipeline, _, Some(rank)) => {
            bail!("--decode pipeline: the model does not fit: {}", pipeline_no(rank))
        }
        (DecodeArg::Auto, Some(redundant), Some(pipeline)) => bail!(
            "the model does not fit: {}; and {}",
            redundant_no(redundant),
            pipeline_no(pipeline)
        ),
    };
    let asked = match (arg, mode) {
        (DecodeArg::Auto, DecodeMode::Pipeline) if redundant_misfit.is_none() => {
            let (rank, n) = shared_gpu.unwrap_or((0, 1));
            format!(
                "auto: {n} ranks share rank {rank}'s GPU, where redundant decode would keep {n} copies of the model \
                 and compute every token {n} times (and the prefill sync the KV cache among them); each rank's own \
                 layers fit (--decode redundant keeps the copies)"
            )
        }
        (DecodeArg::Auto, DecodeMode::Redundant) => {
            "auto: the whole model and KV cache fit every rank".into()
        }
        (DecodeArg::Auto, DecodeMode::Pipeline) => format!(
            "auto: the whole model and KV cache do not fit rank {}, each rank's own layers do",
            redundant_misfit.unwrap_or(0)
        ),
        (_, mode) => format!("--decode {}", mode.name()),
    };
    Ok(DecodePlan {
        mode,
        reason: format!("{asked}; {fits}"),
        ranks_per_gpu: gpu_sharing.iter().copied().max().unwrap_or(1).max(1),
    })
}

/// ", the embedding", ", the head", both, or nothing: what a stage holds besides its layers.
fn stage_extras(rank: usize, last: usize) -> &'static str {
    match (rank == 0, rank == last) {
        (true, true) => ", the embedding and the head",
        (true, false) => " and the embedding",
        (false, true) => " and the head",
        (false, false) => "",
    }
}

/// "per rank: redundant 1.2 MiB (fits), pipeline up to 0.5 MiB (fits), of 4.0 GiB (--max-memory)"
fn fit_summary(
    ranks: &[RankMemory],
    source: &str,
    redundant: Option<usize>,
    pipeline: Option<usize>,
) -> String {
    let verdict = |misfit: Option<usize>| match misfit {
        None => "fits".to_string(),
        Some(rank) => format!("does not fit rank {rank}"),
    };
    let largest = ranks
        .iter()
        .enumerate()
        .max_by_key(|(rank, r)| (r.pipeline.total(), std::cmp::Reverse(*rank)))
        .map_or((0, 0), |(rank, r)| (rank, r.pipeline.total()));
    let redundant_total = ranks.first().map_or(0, |r| r.redundant.total());
    let least = ranks.iter().filter_map(|r| r.available).min();
    let against = match least {
        Some(least) => format!("of at least {} ({source})", bytes(least)),
        None => format!("not checked ({source} unknown)"),
    };
    format!(
        "memory per rank: redundant {} ({}), pipeline up to {} on rank {} ({}), {against}",
        bytes(redundant_total),
        verdict(redundant),
        bytes(largest.1),
        largest.0,
        verdict(pipeline),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Qwen3Config {
        crate::model::tiny::config()
    }

    /// The tiny model over 3 ranks with `available` bytes on each.
    fn plan(arg: DecodeArg, available: [Option<u64>; 3]) -> (Result<DecodePlan>, Vec<RankMemory>) {
        let cfg = tiny();
        let split = LayerSplit::even(cfg.num_hidden_layers, 3).unwrap();
        let ranks = rank_memory(&cfg, 128, DType::F32, &split, &available);
        (choose(arg, &ranks, "--max-memory", &split, 128, &[1; 3]), ranks)
    }

    #[test]
    fn auto_decodes_redundant_where_the_whole_model_fits_every_rank_else_pipelined() {
        let (_, ranks) = plan(DecodeArg::Auto, [None; 3]);
        let redundant = ranks[0].redundant.total();
        let pipeline = ranks.iter().map(|r| r.pipeline.total()).max().unwrap();
        assert!(pipeline < redundant, "{pipeline} vs {redundant}");
        let roomy = plan(DecodeArg::Auto, [Some(redundant); 3]).0.unwrap();
        assert_eq!(roomy.mode, DecodeMode::Redundant);
        assert!(
            roomy
                .reason
                .starts_with("auto: the whole model and KV cache fit every rank"),
            "{}",
            roomy.reason
        );
        // one rank short of the whole model: pipeline, and why
        let short = plan(
            DecodeArg::Auto,
            [Some(redundant), Some(redundant - 1), Some(redundant)],
        )
        .0
        .unwrap();
        assert_eq!(short.mode, DecodeMode::Pipeline);
        assert!(short.reason.contains("do not fit rank 1"), "{}", short.reason);
        assert!(
            short.reason.contains("redundant ")
                && short.reason.contains("(does not fit rank 1), pipeline up to"),
            "{}",
            short.reason
        );
        // nothing known: nothing checked, redundant
        let unknown = plan(DecodeArg::Auto, [None; 3]).0.unwrap();
        assert_eq!(unknown.mode, DecodeMode::Redundant);
        assert!(unknown.reason.contains("not checked"), "{}", unknown.reason);
    }

    #[test]
    fn ranks_that_share_a_gpu_decode_pipelined_under_auto_and_as_asked_otherwise() {
        let cfg = tiny();
        let split = LayerSplit::even(cfg.num_hidden_layers, 3).unwrap();
        let ranks = rank_memory(&cfg, 128, DType::F32, &split, &[None; 3]);
        let with =
            |arg, sharing: &[usize]| choose(arg, &ranks, "free on the device", &split, 128, sharing).unwrap();
        let shared = with(DecodeArg::Auto, &[3, 3, 3]);
        assert_eq!(shared.mode, DecodeMode::Pipeline);
        assert!(
            shared
                .reason
                .starts_with("auto: 3 ranks share rank 0's GPU, where redundant decode would keep 3 copies"),
            "{}",
            shared.reason
        );
        assert_eq!(shared.ranks_per_gpu, 3);
        // two GPUs for three ranks: ranks 0 and 2 share one
        let two_gpus = with(DecodeArg::Auto, &[2, 1, 2]);
        assert_eq!((two_gpus.mode, two_gpus.ranks_per_gpu), (DecodeMode::Pipeline, 2));
        let own_gpus = with(DecodeArg::Auto, &[1, 1, 1]);
        assert_eq!(
            (own_gpus.mode, own_gpus.ranks_per_gpu),
            (DecodeMode::Redundant, 1)
        );
        assert_eq!(with(DecodeArg::Redundant, &[3, 3, 3]).mode, DecodeMode::Redundant);
    }

    #[test]
    fn a_mode_asked_for_that_does_not_fit_is_an_error_naming_the_flag_the_rank_and_the_numbers() {
        let (_, ranks) = plan(DecodeArg::Auto, [None; 3]);
        let between = Some(ranks.iter().map(|r| r.pipeline.total()).max().unwrap());
        let error = plan(DecodeArg::Redundant, [between; 3])
            .0
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--decode redundant: the model does not fit: it needs "),
            "{error}"
        );
        assert!(
            error.contains("is --max-memory on rank 0; --decode pipeline fits every rank"),
            "{error}"
        );
        let forced = plan(DecodeArg::Pipeline, [between; 3]).0.unwrap();
        assert_eq!(forced.mode, DecodeMode::Pipeline);
        assert!(
            forced.reason.starts_with("--decode pipeline; memory per rank"),
            "{}",
            forced.reason
        );
        let tiny = Some(1 << 10);
        let error = plan(DecodeArg::Pipeline, [tiny; 3]).0.unwrap_err().to_string();
        assert!(
            error.starts_with("--decode pipeline: the model does not fit: rank 0 needs"),
            "{error}"
        );
        assert!(error.contains("of its layers 0..4 and the embedding"), "{error}");
        let error = plan(DecodeArg::Auto, [tiny; 3]).0.unwrap_err().to_string();
        assert!(error.starts_with("the model does not fit: it needs"), "{error}");
        assert!(
            error.contains("but 0.000 GiB is --max-memory on rank 0; and rank 0 needs"),
            "{error}"
        );
    }
}
