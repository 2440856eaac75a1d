//! What benchmarks rely on: `--prefill-runs N` repeats the same prefill (same tokens, one set of
//! spans in the trace, every run's TTFT reported), and `bench-comm` times every sync strategy
//! beside the MPI library's own allgather, after checking that each moved the right bytes.

mod common;

use common::*;

#[test]
fn prefill_runs_repeat_the_same_prefill_and_keep_the_last_runs_spans() {
    let name = "gqa-tied-5x";
    let model = materialize(name);
    let exp = expected(name);
    let m = model.path().display().to_string();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("runs.h5");
    let p = path.display().to_string();
    let prompt = exp["prompt"].as_str().unwrap();
    let args = [
        "--model",
        &m,
        "--prompt",
        prompt,
        "--max-new-tokens",
        "8",
        "--chunk-size",
        "4",
        "--prefill-runs",
        "3",
        "--trace",
        &p,
        "--json",
    ];
    let (code, stdout, stderr, _) = run_mpi(3, &args, &[], 120);
    assert_eq!(code, 0, "{stderr}");
    let report = json_report(&stdout);
    let runs: Vec<f64> = serde_json::from_value(report["ttft_runs_s"].clone()).unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(
        report["ttft_s"].as_f64().unwrap(),
        runs[2],
        "ttft_s is the last run's"
    );
    let generated = expected_ids(&report, "generated_ids");
    assert_eq!(
        generated,
        expected_ids(&exp, "greedy_ids"),
        "repeated prefills changed the tokens"
    );

    let file = hdf5::File::open(&path).unwrap();
    let stored: Vec<f64> = file.dataset("prefill_runs/ttft_s").unwrap().read_raw().unwrap();
    assert_eq!(stored, runs);
    let split: Vec<usize> = serde_json::from_value(report["layer_split"].clone()).unwrap();
    let layers: usize = split.iter().sum();
    let layers = layers as i32;
    let chunks = report["chunks"].as_u64().unwrap() as i32;
    let mut computed = std::collections::HashMap::new();
    for rank in 0..3 {
        let spans: Vec<qwen3_mpi::trace::spans::SpanRow> = file
            .dataset(&format!("ranks/{rank}/events"))
            .unwrap()
            .read_raw()
            .unwrap();
        for s in spans
            .iter()
            .filter(|s| s.kind == qwen3_mpi::trace::spans::SpanKind::LayerCompute)
        {
            *computed.entry((s.layer, s.chunk)).or_insert(0) += 1;
        }
    }
    for layer in 0..layers {
        for chunk in 0..chunks {
            assert_eq!(
                computed.get(&(layer, chunk)),
                Some(&1),
                "layer {layer} chunk {chunk}"
            );
        }
    }
}

#[test]
fn bench_comm_times_every_sync_beside_the_mpi_baseline() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("comm.h5");
    let p = path.display().to_string();
    let args = [
        "bench-comm",
        "--sizes",
        "4KiB,64KiB",
        "--iters",
        "3",
        "--sync",
        "allgather,ring",
        "--trace",
        &p,
        "--json",
    ];
    let (code, stdout, stderr, _) = run_mpi(3, &args, &[], 120);
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    // f32 K/V of 8 heads x 128 on the CPU: 8 KiB a position, so 4 KiB rounds up to one position
    let position = 2 * 8 * 128 * 4;
    let mut seen = Vec::new();
    for r in &rows {
        let (transport, sync) = (r["transport"].as_str().unwrap(), r["sync"].as_str().unwrap());
        let bytes = r["bytes_per_rank"].as_u64().unwrap();
        seen.push((transport.to_owned(), sync.to_owned(), bytes));
        assert_eq!(r["ranks"], 3);
        assert_eq!(r["iters"], 3);
        let (min, median, max) = (
            r["min_s"].as_f64().unwrap(),
            r["median_s"].as_f64().unwrap(),
            r["max_s"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= median && median <= max, "{r}");
        let expected_bus = 3.0 * bytes as f64 / median / 1e9 * 2.0 / 3.0;
        assert!((r["busbw_gbs"].as_f64().unwrap() - expected_bus).abs() < 1e-9 * expected_bus.max(1.0));
    }
    let expected: Vec<(String, String, u64)> = [position as u64, 65536]
        .iter()
        .flat_map(|&b| {
            [
                ("mpi-host-baseline", "allgather"),
                ("host", "allgather"),
                ("host-mpi", "allgather"),
                ("host", "ring"),
            ]
            .map(|(t, s)| (t.to_owned(), s.to_owned(), b))
        })
        .collect();
    assert_eq!(seen, expected);

    let file = hdf5::File::open(&path).unwrap();
    let table: Vec<qwen3_mpi::bench::comm_table::CommRow> = file.dataset("comm").unwrap().read_raw().unwrap();
    assert_eq!(table.len(), rows.len());
    for (stored, r) in table.iter().zip(&rows) {
        assert_eq!(stored.transport.as_str(), r["transport"].as_str().unwrap());
        assert_eq!(stored.median_s, r["median_s"].as_f64().unwrap());
    }
}
