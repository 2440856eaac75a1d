//! Rank 0's progress on stderr: lines of prefill chunks and decode tokens where asked for (or
//! every 5 s in a log), none for a short job by default, and no ANSI codes when stderr is not
//! a terminal (here it is a pipe).

mod common;

use common::*;

#[test]
fn progress_lines_name_chunks_and_tokens_and_carry_no_ansi_codes() {
    let args = [
        "--synthetic-prompt",
        "256",
        "--chunk-size",
        "16",
        "--max-new-tokens",
        "6",
        "--progress-every",
        "0.000001",
    ];
    let (code, _, stderr, _) = run_mpi(3, &args, &[("RUST_LOG", "info")], 120);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI codes in a piped stderr:\n{stderr:?}"
    );
    assert!(stderr.contains("INFO"), "RUST_LOG=info logs nothing:\n{stderr}");
    let prefill: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("qwen3-mpi: prefill: rank 0 passed chunk "))
        .collect();
    assert!(!prefill.is_empty(), "no prefill progress:\n{stderr}");
    for line in &prefill {
        // "chunk K of 16 (16·K of 256 tokens, R tokens/s); first token in about S s"
        let rest = &line["qwen3-mpi: prefill: rank 0 passed chunk ".len()..];
        let (k, rest) = rest.split_once(" of 16 (").unwrap_or_else(|| panic!("{line}"));
        let k: usize = k.parse().unwrap_or_else(|_| panic!("{line}"));
        assert!((1..=16).contains(&k), "{line}");
        assert!(rest.starts_with(&format!("{} of 256 tokens, ", 16 * k)), "{line}");
        assert!(rest.contains(" tokens/s); first token in about "), "{line}");
    }
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("qwen3-mpi: decode: token ") && l.ends_with(" tokens/s")),
        "no decode progress:\n{stderr}"
    );
}

#[test]
fn a_short_job_prints_no_progress_and_zero_turns_it_off() {
    for args in [
        &["--max-new-tokens", "3"][..],
        &["--max-new-tokens", "3", "--progress-every", "0"][..],
    ] {
        let (code, _, stderr, _) = run_mpi(2, args, &[], 60);
        assert_eq!(code, 0, "{stderr}");
        assert!(!stderr.contains("qwen3-mpi: prefill:"), "{args:?}:\n{stderr}");
        assert!(!stderr.contains("qwen3-mpi: decode:"), "{args:?}:\n{stderr}");
    }
}
