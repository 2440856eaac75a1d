//! The results notebooks run headless on traces made here, so they cannot rot.

mod common;

use common::*;

fn python() -> std::path::PathBuf {
    let python = std::env::var_os("QWEN3_MPI_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| repo().join(".venv-results/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/python-deps.sh",
        python.display()
    );
    python
}

#[test]
fn traces_read_with_h5py_hold_the_layout_and_notebooks_draw_their_figures() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // pipelined decode over 1-3 ranks, for decode_modes.ipynb against the redundant runs below
    // (first, so that the newest file, which the timeline draws, stays the last run below)
    for ranks in [1, 2, 3] {
        let t = runs
            .join(format!("n{ranks}-pipeline-c8.h5"))
            .display()
            .to_string();
        let args = [
            "--synthetic-prompt",
            "48",
            "--chunk-size",
            "8",
            "--max-new-tokens",
            "3",
            "--decode",
            "pipeline",
            "--trace",
            &t,
            "--json",
        ];
        let (code, _, stderr, _) = run_mpi(ranks, &args, &[], 120);
        assert_eq!(code, 0, "{ranks} ranks, pipelined decode: {stderr}");
    }
    // a chunk-size x rank sweep of the allgather, and the ring at one chunk size
    let mut sweep: Vec<(usize, &str, &str)> = Vec::new();
    for chunk in ["8", "16"] {
        sweep.extend([1, 2, 3].map(|ranks| (ranks, "allgather", chunk)));
    }
    sweep.extend([(2, "ring", "8"), (3, "ring", "8")]);
    for &(ranks, sync, chunk) in &sweep {
        let trace = runs.join(format!("n{ranks}-{sync}-c{chunk}.h5"));
        let t = trace.display().to_string();
        let args = [
            "--synthetic-prompt",
            "48",
            "--chunk-size",
            chunk,
            "--max-new-tokens",
            "3",
            "--sync",
            sync,
            "--trace",
            &t,
            "--json",
        ];
        let (code, stdout, stderr, _) = run_mpi(ranks, &args, &[], 120);
        assert_eq!(code, 0, "{ranks} ranks {sync}: {stderr}");
        if ranks == 3 && chunk == "8" {
            // The layout contract, read with h5py, against the run's JSON report.
            let report = dir.path().join(format!("n{ranks}-{sync}.json"));
            std::fs::write(&report, &stdout).unwrap();
            let check = std::process::Command::new(&python)
                .arg(repo().join("results/check_trace.py"))
                .args([&trace, &report])
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "check_trace.py: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let figures = dir.path().join("figures");
    let out = std::process::Command::new(&python)
        .arg(repo().join("results/run_notebooks.py"))
        .arg(&runs)
        .arg(&figures)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "notebooks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for figure in [
        "timeline.png",
        "kv_sync_bandwidth.png",
        "kv_sync_exposed.png",
        "scaling.png",
        "decode_modes.png",
    ] {
        let size = std::fs::metadata(figures.join(figure))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 10_000, "{figure} missing or empty ({size} bytes)");
    }
    // scaling.ipynb draws one line per (prompt, chunk size, sync, transport), over its ranks
    let series = std::fs::read_to_string(figures.join("scaling_series.csv")).unwrap();
    let mut lines: Vec<&str> = series.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "48,16,allgather,host,1 2 3",
            "48,8,allgather,host,1 2 3",
            "48,8,none,none,1 2 3", // pipelined decode: no KV sync
            "48,8,ring,host,2 3",
            "prompt_tokens,chunk,sync,transport,ranks",
        ],
        "{series}"
    );
    // decode_modes.ipynb draws one line per decode mode, a point at each rank count it ran at
    let series = std::fs::read_to_string(figures.join("decode_modes_series.csv")).unwrap();
    let mut lines: Vec<&str> = series.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "model,device,prompt_tokens,decode_mode,ranks",
            "tiny (built-in),cpu,48,pipeline,1 2 3",
            "tiny (built-in),cpu,48,redundant,1 2 3",
        ],
        "{series}"
    );
    // and beside it a pipelined step split per rank: every rank of each rank count, each with
    // its compute, a send to the next rank and a receive from the previous one where it has them
    let split = std::fs::read_to_string(figures.join("decode_split.csv")).unwrap();
    let mut rows = split.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let mut seen = Vec::new();
    for row in rows {
        let cells: Vec<&str> = row.split(',').collect();
        let int = |name: &str| cells[col(name)].parse::<usize>().unwrap();
        let ms = |name: &str| cells[col(name)].parse::<f64>().unwrap();
        let (ranks, rank) = (int("ranks"), int("rank"));
        assert!(ms("compute_ms") > 0.0, "{row}");
        assert_eq!(ms("send_ms") > 0.0, rank + 1 < ranks, "send: {row}");
        assert_eq!(ms("recv_ms") > 0.0, rank > 0, "receive: {row}");
        let parts: f64 = ["compute_ms", "send_ms", "recv_ms", "wait_ms"]
            .map(ms)
            .iter()
            .sum();
        assert!((parts - ms("step_ms")).abs() < 1e-3, "{row}");
        assert_eq!(int("steps"), 2, "two decode steps of three new tokens: {row}");
        seen.push((ranks, rank));
    }
    seen.sort();
    assert_eq!(seen, [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)], "{split}");
}
