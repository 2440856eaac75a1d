//! `mpirun -n R qwen3-mpi` with no arguments shows the pipeline: at 2 to 4 ranks every rank
//! computes at least two chunks, the stages overlap in time, and the summary sets the overlap
//! beside its ideal R·C/(C+R−1); the built-in model's text is marked meaningless where it is
//! printed; every TTFT of `--prefill-runs` is printed.

mod common;

use common::*;
use qwen3_mpi::job::decode_stream::TINY_NOTICE;
use qwen3_mpi::trace::spans::{Span, SpanKind, SpanRow};

/// Every rank's LayerCompute spans of a finished trace (index = rank).
fn layer_spans(trace: &std::path::Path, ranks: usize) -> Vec<Vec<Span>> {
    let file = hdf5::File::open(trace).unwrap();
    (0..ranks)
        .map(|r| {
            let events: Vec<SpanRow> = file
                .dataset(&format!("ranks/{r}/events"))
                .unwrap()
                .read_raw()
                .unwrap();
            assert!(
                events.iter().all(|e| e.rank == r as i32),
                "rank {r}'s rank column"
            );
            events
                .iter()
                .map(SpanRow::span)
                .filter(|s| s.kind == SpanKind::LayerCompute)
                .collect()
        })
        .collect()
}

#[test]
fn the_default_job_gives_every_rank_two_chunks_or_more_and_its_stages_overlap() {
    for ranks in 2..=4 {
        let out = tempfile::tempdir().unwrap();
        let trace = out.path().join("job.h5");
        let trace_arg = trace.display().to_string();
        let args = ["--max-new-tokens", "3", "--trace", &trace_arg, "--json"];
        let (code, stdout, stderr, _) = run_mpi(ranks, &args, &[], 120);
        assert_eq!(code, 0, "{ranks} ranks: {stderr}");
        let report = json_report(&stdout);
        let chunks = report["chunks"].as_u64().unwrap() as usize;
        assert!(
            chunks >= 2 * ranks,
            "{ranks} ranks: only {chunks} chunks\n{stdout}"
        );

        // every rank computes every chunk, and the stages overlap: at step t stage r works on
        // chunk t − r, so several stages have work at one step (read from the spans' step
        // fields, not from wall-clock times, which an oversubscribed machine can serialise)
        let spans = layer_spans(&trace, ranks);
        for (rank, mine) in spans.iter().enumerate() {
            let mut seen: Vec<i32> = mine.iter().map(|s| s.chunk).collect();
            seen.sort();
            seen.dedup();
            assert_eq!(
                seen,
                (0..chunks as i32).collect::<Vec<_>>(),
                "rank {rank}'s chunks"
            );
        }
        for (rank, mine) in spans.iter().enumerate() {
            for span in mine {
                assert_eq!(
                    span.step,
                    span.chunk + rank as i32,
                    "{ranks} ranks: rank {rank} computed chunk {} at step {}",
                    span.chunk,
                    span.step
                );
            }
        }
        let busy_at = |step: i32| {
            spans
                .iter()
                .filter(|mine| mine.iter().any(|s| s.step == step))
                .count()
        };
        let steps = (chunks + ranks - 1) as i32;
        let shared = (0..steps).filter(|&t| busy_at(t) >= 2).count();
        // busy stages at step t: #{r : 0 ≤ t − r < C}, two or more for t in [1, C + R − 3]
        assert_eq!(
            shared,
            chunks + ranks - 3,
            "{ranks} ranks: steps with two or more busy stages"
        );

        // the summary: the overlap against R·C/(C+R−1)
        let ideal = (ranks * chunks) as f64 / (chunks + ranks - 1) as f64;
        assert!((report["pipeline_ideal"].as_f64().unwrap() - ideal).abs() < 1e-12);
        let overlap = report["pipeline_overlap"].as_f64().unwrap();
        assert!(overlap > 0.0 && overlap.is_finite(), "{overlap}");
        let line = format!("pipeline: {chunks} chunks through {ranks} stages overlapped {overlap:.2}x");
        assert!(stdout.contains(&line), "no `{line}` in\n{stdout}");
        assert!(stdout.contains(&format!("R·C/(C+R−1) = {ideal:.2}x")), "{stdout}");

        // the built-in model's text comes after a line that says it is meaningless
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.first(), Some(&TINY_NOTICE), "{stdout}");
        assert!(lines
            .iter()
            .any(|l| l.starts_with("--- ") && l.contains("with random weights")));
    }
}

#[test]
fn every_ttft_of_the_prefill_runs_is_printed() {
    let args = ["--max-new-tokens", "2", "--prefill-runs", "3", "--json"];
    let (code, stdout, stderr, _) = run_mpi(2, &args, &[], 120);
    assert_eq!(code, 0, "{stderr}");
    let report = json_report(&stdout);
    let runs: Vec<f64> = report["ttft_runs_s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(runs.len(), 3);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("TTFT of each of the 3 prefill runs: "))
        .unwrap_or_else(|| panic!("no line of every run's TTFT in\n{stdout}"));
    assert_eq!(line.matches(" ms").count(), 3, "{line}");
}
