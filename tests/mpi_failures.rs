//! A rank that fails, dies or stalls mid-run ends every rank quickly with a non-zero exit.

mod common;

use common::*;

/// Runs the default model on 3 ranks with a fault; returns (code, stderr, seconds).
fn with_fault(fault: &str, timeout: &str) -> (i32, String, f64) {
    let args = ["--max-new-tokens", "6", "--chunk-size", "4", "--timeout", timeout];
    let (code, _, stderr, secs) = run_mpi(3, &args, &[("QWEN3_MPI_FAULT", fault)], 60);
    (code, stderr, secs)
}

#[test]
fn rank_error_mid_prefill_ends_job_with_its_message() {
    let (code, stderr, secs) = with_fault("error@1:prefill:2", "30");
    assert_ne!(code, 0);
    assert_ne!(code, 124, "the job hung until the test's time limit");
    assert!(stderr.contains("rank 1: injected fault"), "{stderr}");
    assert!(secs < 20.0, "took {secs:.1} s");
}

#[test]
fn a_panic_on_any_rank_ends_the_job_within_seconds_with_one_line() {
    for (fault, rank) in [
        ("panic@1:prefill:2", 1),
        ("panic@2:decode:1", 2),
        ("panic@0:prefill:0", 0),
    ] {
        let args = ["--max-new-tokens", "6", "--chunk-size", "4", "--timeout", "60"];
        let env = [("QWEN3_MPI_FAULT", fault), ("RUST_BACKTRACE", "0")];
        let (code, _, stderr, secs) = run_mpi(3, &args, &env, 90);
        assert_eq!(code, 1, "{fault}: {stderr}");
        assert!(
            secs < 20.0,
            "{fault}: took {secs:.1} s (the --timeout is 60 s: it must not be what ends it)"
        );
        let line = format!("qwen3-mpi: error: rank {rank}: internal error (panic): injected panic");
        assert_eq!(stderr.matches(&line).count(), 1, "{fault}: {stderr}");
        assert!(
            !stderr.contains("stack backtrace"),
            "{fault}: a backtrace without RUST_BACKTRACE: {stderr}"
        );
        assert!(
            !stderr.contains("panicked at"),
            "{fault}: Rust's panic message: {stderr}"
        );
    }
}

#[test]
fn rank_killed_mid_prefill_or_decode_ends_job_within_timeout() {
    for fault in ["kill@2:prefill:1", "kill@0:prefill:3", "kill@1:decode:2"] {
        let (code, stderr, secs) = with_fault(fault, "30");
        assert_ne!(code, 0, "{fault}: {stderr}");
        assert_ne!(code, 124, "{fault}: the job hung until the test's time limit");
        assert!(secs < 20.0, "{fault}: took {secs:.1} s");
    }
}

#[test]
fn stalled_rank_is_reported_by_the_watchdog() {
    let (code, stderr, secs) = with_fault("stall@1:prefill:1", "3");
    assert_ne!(code, 0);
    assert_ne!(code, 124, "the job hung until the test's time limit");
    assert!(stderr.contains("timed out after 3 s waiting for"), "{stderr}");
    assert!(secs < 20.0, "took {secs:.1} s");
}

#[test]
fn twenty_kills_at_scattered_points_never_hang() {
    // Points spread over prefill steps and decode steps of 3 ranks (4-token chunks of a
    // 20-token prompt: 5 chunks, 7 steps; 6 tokens to decode).
    for i in 0..20u64 {
        let z = qwen3_mpi::model::synthetic::splitmix64(7, i);
        let rank = z % 3;
        let fault = if (z >> 8).is_multiple_of(3) {
            format!("kill@{rank}:decode:{}", (z >> 16) % 5)
        } else {
            format!("kill@{rank}:prefill:{}", (z >> 16) % 7)
        };
        let (code, stderr, secs) = with_fault(&fault, "15");
        assert_ne!(
            code, 0,
            "{fault}: the job succeeded although a rank was killed\n{stderr}"
        );
        assert_ne!(code, 124, "{fault}: the job hung until the test's time limit");
        assert!(secs < 20.0, "{fault}: took {secs:.1} s");
    }
}
