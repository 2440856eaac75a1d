//! `--trace FILE.h5`: the output datasets hold what the job computed, checked against the
//! transformers reference, and the file appears only when complete.

mod common;

use common::*;

fn read_attr(file: &hdf5::File, name: &str) -> String {
    file.attr(name)
        .unwrap()
        .read_scalar::<hdf5::types::VarLenUnicode>()
        .unwrap()
        .to_string()
}

#[test]
fn trace_holds_prompt_generated_ids_and_reference_logits() {
    let name = "mha-untied-4x";
    let model = materialize(name);
    let exp = expected(name);
    let m = model.path().display().to_string();
    let out = tempfile::tempdir().unwrap();
    for ranks in [1, 2] {
        let path = out.path().join(format!("runs/trace-{ranks}.h5"));
        let p = path.display().to_string();
        let args = [
            "--model",
            &m,
            "--prompt",
            exp["prompt"].as_str().unwrap(),
            "--max-new-tokens",
            "8",
            "--chunk-size",
            "9",
            "--trace",
            &p,
        ];
        // --op-spans changes nothing on the CPU (its unfused layer has no parts to time)
        let args = [&args[..], if ranks == 2 { &["--op-spans"][..] } else { &[] }].concat();
        let (code, _, stderr, _) = run_mpi(ranks, &args, &[], 120);
        assert_eq!(code, 0, "{stderr}");
        let file = hdf5::File::open(&path).unwrap();
        assert_eq!(read_attr(&file, "status"), "ok");
        assert_eq!(read_attr(&file, "prefill_attention"), "reference");
        assert_eq!(read_attr(&file, "decode_path"), "reference");
        assert_eq!(read_attr(&file, "hidden_transport"), "host"); // the CPU's only path
        assert!(read_attr(&file, "layer_kernels").contains("CPU"));
        let prompt: Vec<u32> = file.dataset("output/prompt_ids").unwrap().read_raw().unwrap();
        let generated: Vec<u32> = file.dataset("output/generated_ids").unwrap().read_raw().unwrap();
        let logits: Vec<f32> = file.dataset("output/prefill_logits").unwrap().read_raw().unwrap();
        assert_eq!(prompt, expected_ids(&exp, "prompt_ids"));
        assert_eq!(generated, expected_ids(&exp, "greedy_ids"));
        let err = relative_error(&logits, &expected_logits(name));
        assert!(err <= 1e-5, "{ranks} ranks: trace logits relative error {err:e}");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "a partial trace file was left behind");
    }
}

#[test]
fn unwritable_trace_path_fails_before_the_run() {
    let (code, _, stderr) = run_cli(&["--trace", "/proc/qwen3-mpi/x.h5"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--trace /proc/qwen3-mpi/x.h5"), "{stderr}");
}

#[test]
fn spans_cover_every_layer_and_chunk_once_on_its_owner_and_never_overlap_per_thread() {
    use qwen3_mpi::trace::spans::{Span, SpanKind, SpanRow};
    use std::collections::HashSet;
    let name = "gqa-untied-odd-4x"; // 5 layers
    let model = materialize(name);
    let exp = expected(name);
    let m = model.path().display().to_string();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("spans.h5");
    let p = path.display().to_string();
    let prompt = exp["prompt"].as_str().unwrap(); // 38 tokens: 6 chunks of 7
    let args = [
        "--model",
        &m,
        "--prompt",
        prompt,
        "--max-new-tokens",
        "5",
        "--chunk-size",
        "7",
        "--trace",
        &p,
        "--json",
    ];
    let (code, stdout, stderr, _) = run_mpi(3, &args, &[], 120);
    assert_eq!(code, 0, "{stderr}");
    let report = json_report(&stdout);
    let file = hdf5::File::open(&path).unwrap();
    // list attributes are arrays
    let split: Vec<u64> = file.attr("layer_split").unwrap().read_raw().unwrap();
    let split: Vec<usize> = split.into_iter().map(|n| n as usize).collect();
    assert_eq!(split, vec![2, 2, 1]);
    let lengths: Vec<u64> = file.attr("chunk_lengths").unwrap().read_raw().unwrap();
    assert_eq!(lengths, vec![7, 7, 7, 7, 7, 3]);
    let hosts: Vec<hdf5::types::VarLenUnicode> = file.attr("hostnames").unwrap().read_raw().unwrap();
    assert_eq!(hosts.len(), 3);
    assert!(hosts.iter().all(|h| !h.is_empty()));
    // CPU ranks share no GPU
    let per_gpu: u64 = file.attr("ranks_per_gpu").unwrap().read_scalar().unwrap();
    assert_eq!((per_gpu, report["ranks_per_gpu"].as_u64()), (1, Some(1)));

    let mut computed = HashSet::new();
    let mut first_layer = 0;
    for (rank, &count) in split.iter().enumerate() {
        let rows: Vec<SpanRow> = file
            .dataset(&format!("ranks/{rank}/events"))
            .unwrap()
            .read_raw()
            .unwrap();
        assert!(
            rows.iter().all(|r| r.rank == rank as i32),
            "rank {rank}'s rank column"
        );
        let spans: Vec<Span> = rows.iter().map(SpanRow::span).collect();
        let owned = first_layer..first_layer + count;
        first_layer += count;
        for s in spans.iter().filter(|s| s.kind == SpanKind::LayerCompute) {
            assert!(
                owned.contains(&(s.layer as usize)),
                "rank {rank} computed layer {} outside {owned:?}",
                s.layer
            );
            assert!(
                computed.insert((s.layer, s.chunk)),
                "layer {} chunk {} computed twice",
                s.layer,
                s.chunk
            );
        }
        assert!(
            spans.iter().any(|s| s.kind == SpanKind::KvSync),
            "rank {rank} has no KV sync span"
        );
        assert!(
            spans.iter().any(|s| s.kind == SpanKind::DecodeStep),
            "rank {rank} has no decode span"
        );
        for thread in [0u8, 1, 2] {
            let mut mine: Vec<&Span> = spans.iter().filter(|s| s.thread as u8 == thread).collect();
            mine.sort_by_key(|s| s.t_start_ns);
            for pair in mine.windows(2) {
                assert!(
                    pair[0].t_end_ns <= pair[1].t_start_ns,
                    "rank {rank} thread {thread}: {:?} overlaps {:?}",
                    pair[0],
                    pair[1]
                );
            }
            assert!(mine.iter().all(|s| s.t_end_ns >= s.t_start_ns));
        }
    }
    assert_eq!(computed.len(), 5 * 6, "every (layer, chunk) once");

    let summary = file.group("summary").unwrap();
    let ttft: f64 = summary.attr("ttft_s").unwrap().read_scalar().unwrap();
    assert_eq!(ttft, report["ttft_s"].as_f64().unwrap());
    let sent: Vec<u64> = file.dataset("summary/kv_bytes_sent").unwrap().read_raw().unwrap();
    let json_sent: Vec<u64> = report["per_rank"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kv_bytes_sent"].as_u64().unwrap())
        .collect();
    assert_eq!(sent, json_sent);
    let generated: Vec<u32> = file.dataset("output/generated_ids").unwrap().read_raw().unwrap();
    assert_eq!(generated, expected_ids(&report, "generated_ids"));
}

#[test]
fn failed_jobs_leave_a_complete_file_marked_failed_with_the_failing_ranks_message() {
    let out = tempfile::tempdir().unwrap();
    // (fault, --timeout, what the file's error must say)
    let panic_1 = "rank 1: internal error (panic): injected panic";
    let panic_0 = "rank 0: internal error (panic): injected panic";
    let cases: [(&str, &str, &[&str]); 7] = [
        ("error@0:prefill:1", "20", &["rank 0: injected fault"]),
        ("error@1:prefill:2", "20", &["rank 1: injected fault"]),
        ("panic@1:prefill:1", "20", &[panic_1]),
        ("panic@0:decode:1", "20", &[panic_0]),
        ("error@0:decode:2", "20", &["rank 0: injected fault"]),
        // a peer that stops answering: the watchdog of rank 0 or 2 ends the job
        ("stall@1:prefill:1", "3", &["timed out after 3 s waiting for"]),
        // a peer killed outright can say nothing: rank 0 is terminated by mpirun, or its MPI
        // calls fail first
        (
            "kill@2:prefill:1",
            "20",
            &["terminated by signal", "a peer process may have died"],
        ),
    ];
    for (i, (fault, timeout, causes)) in cases.iter().enumerate() {
        let path = out.path().join(format!("failed-{i}.h5"));
        let p = path.display().to_string();
        let args = [
            "--max-new-tokens",
            "5",
            "--chunk-size",
            "4",
            "--trace",
            &p,
            "--timeout",
            timeout,
        ];
        let (code, _, stderr, _) = run_mpi(3, &args, &[("QWEN3_MPI_FAULT", fault)], 60);
        assert_ne!(code, 0, "{fault}");
        assert_ne!(code, 124, "{fault}: hung");
        let file = hdf5::File::open(&path)
            .unwrap_or_else(|e| panic!("{fault}: no complete trace file ({e}); stderr:\n{stderr}"));
        assert_eq!(read_attr(&file, "status"), "failed", "{fault}");
        let error = read_attr(&file, "error");
        assert!(
            causes.iter().any(|cause| error.contains(cause)),
            "{fault}: error attribute {error:?} says none of {causes:?}; stderr:\n{stderr}"
        );
        // what the job was is in the file however it ended
        assert!(read_attr(&file, "command_line").contains("--trace"), "{fault}");
        let world: u64 = file.attr("world_size").unwrap().read_scalar().unwrap();
        assert_eq!(world, 3, "{fault}");
        let events: Vec<qwen3_mpi::trace::spans::Span> =
            file.dataset("ranks/0/events").unwrap().read_raw().unwrap();
        assert!(!events.is_empty(), "{fault}: no events recorded so far");
        assert!(partial_files(out.path()).is_empty(), "{fault}: a .partial left");
    }
    // A setup error every rank agrees on is in the file too.
    let path = out.path().join("setup.h5");
    let p = path.display().to_string();
    let (code, _, _, _) = run_mpi(2, &["--synthetic-prompt", "40950", "--trace", &p], &[], 60);
    assert_eq!(code, 1);
    let file = hdf5::File::open(&path).unwrap();
    assert_eq!(read_attr(&file, "status"), "failed");
    assert!(read_attr(&file, "error").contains("max_position_embeddings"));
}

#[test]
fn trace_tools_summarise_and_export_for_perfetto() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("tools.h5");
    let p = path.display().to_string();
    let (code, _, stderr, _) = run_mpi(
        3,
        &[
            "--synthetic-prompt",
            "30",
            "--chunk-size",
            "6",
            "--max-new-tokens",
            "3",
            "--trace",
            &p,
        ],
        &[],
        120,
    );
    assert_eq!(code, 0, "{stderr}");

    let (code, stdout, stderr) = run_cli(&["trace", "summary", &p]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("tools.h5  ok")),
        "no row:\n{stdout}"
    );
    let (code, csv, stderr) = run_cli(&["trace", "summary", "--csv", &p, &schema_1_copy(&path)]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "file,status,model,ranks,prompt_tokens,chunk_size,chunks,sync,transport,decode_mode,\
         ttft_s,prefill_tokens_per_s,decode_tokens_per_s,max_exposed_sync_ms"
    );
    // this file, and a copy in the layout of schema 1 (read the same)
    for (line, name) in lines[1..].iter().zip(["tools.h5", "tools-schema-1.h5"]) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 14, "{line}");
        assert_eq!(
            &fields[..10],
            &[
                name,
                "ok",
                "tiny (built-in)",
                "3",
                "30",
                "6",
                "5",
                "allgather",
                "host",
                "redundant"
            ],
            "{line}"
        );
        assert!(fields[10].parse::<f64>().unwrap() > 0.0, "{line}");
    }

    let json_path = out.path().join("tools.json");
    let (code, _, stderr) = run_cli(&["trace", "perfetto", &p, "-o", &json_path.display().to_string()]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let events = json["traceEvents"].as_array().unwrap();
    let pids: std::collections::BTreeSet<u64> = events.iter().filter_map(|e| e["pid"].as_u64()).collect();
    assert_eq!(pids.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(events.iter().any(|e| e["ph"] == "X" && e["cat"] == "kv-sync"));
    // spans named with what they did, and a flow from each hidden-state send to its receive
    let names: Vec<&str> = events.iter().filter_map(|e| e["name"].as_str()).collect();
    for name in [
        "layer 0 chunk 0",
        "kv-sync layer 0 chunk 0",
        "send chunk 0 to rank 1",
        "recv chunk 4 from rank 1",
    ] {
        assert!(names.contains(&name), "no span `{name}`");
    }
    let flow = |phase: &str, pid: u64| -> std::collections::BTreeSet<u64> {
        events
            .iter()
            .filter(|e| e["ph"] == phase && e["pid"] == pid)
            .filter_map(|e| e["id"].as_u64())
            .collect()
    };
    assert_eq!(flow("s", 0).len(), 5, "rank 0 sends 5 chunks");
    assert_eq!(
        flow("s", 0),
        flow("f", 1),
        "every send of rank 0 ends at a receive of rank 1"
    );
    assert_eq!(flow("s", 1), flow("f", 2));
    assert!(events
        .iter()
        .all(|e| e["ph"] != "X" || e["dur"].as_f64().unwrap() >= 0.0));

    let (code, _, stderr) = run_cli(&["trace", "summary", "/nonexistent.h5"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent.h5"), "{stderr}");

    // files that are not (whole) traces of ours: each named with what is wrong; the good one
    // still gets its row
    let text = |s: &str| s.parse::<hdf5::types::VarLenUnicode>().unwrap();
    let foreign = out.path().join("foreign.h5");
    let f = hdf5::File::create(&foreign).unwrap();
    f.new_attr::<hdf5::types::VarLenUnicode>()
        .create("status")
        .unwrap()
        .write_scalar(&text("ok"))
        .unwrap();
    drop(f);
    let future = out.path().join("future.h5");
    std::fs::copy(&path, &future).unwrap();
    let f = hdf5::File::append(&future).unwrap();
    f.delete_attr("schema_version").unwrap();
    f.new_attr::<u64>()
        .create("schema_version")
        .unwrap()
        .write_scalar(&99u64)
        .unwrap();
    drop(f);
    let missing = out.path().join("missing-rank.h5");
    std::fs::copy(&path, &missing).unwrap();
    let f = hdf5::File::append(&missing).unwrap();
    f.group("ranks/1").unwrap().unlink("events").unwrap();
    drop(f);
    let shown = |p: &std::path::Path| p.display().to_string();
    let (code, stdout, stderr) = run_cli(&[
        "trace",
        "summary",
        &shown(&foreign),
        &p,
        &shown(&future),
        &shown(&missing),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("tools.h5")),
        "no row for the good file:\n{stdout}"
    );
    for (file, why) in [
        (&foreign, "no `schema_version`: not a qwen3-mpi trace"),
        (
            &future,
            "schema_version 99, but this qwen3-mpi reads versions 1 to 2",
        ),
        (
            &missing,
            "status ok but rank 1's events (/ranks/1/events) are missing",
        ),
    ] {
        let line = format!("{}: {why}", shown(file));
        assert_eq!(stderr.matches(&line).count(), 1, "{line:?} not in:\n{stderr}");
    }
}

#[test]
fn trace_paths_that_would_destroy_inputs_or_cannot_be_files_are_refused_before_the_run() {
    let model = materialize("gqa-tied-5x");
    let m = model.path().display().to_string();
    let out = tempfile::tempdir().unwrap();
    let weights = model.path().join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let not_ours = out.path().join("notes.h5");
    std::fs::write(&not_ours, "my notes, not a trace").unwrap();
    let cases = [
        (weights.display().to_string(), "inside the model directory"),
        (
            model.path().join("config.json").display().to_string(),
            "inside the model directory",
        ),
        (
            model.path().join("new.h5").display().to_string(),
            "inside the model directory",
        ),
        (out.path().display().to_string(), "is a directory"),
        (
            not_ours.display().to_string(),
            "exists and is not a qwen3-mpi trace",
        ),
    ];
    for (path, why) in &cases {
        let (code, _, stderr, secs) = run_mpi(2, &["--model", &m, "--trace", path], &[], 60);
        assert_eq!(code, 1, "--trace {path}: {stderr}");
        assert!(secs < 20.0, "--trace {path}: took {secs:.1} s");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
        assert_eq!(errors.len(), 1, "--trace {path}: {stderr}");
        assert!(
            errors[0].contains(&format!("--trace {path}: {why}")),
            "{}",
            errors[0]
        );
    }
    assert_eq!(
        std::fs::read(&weights).unwrap(),
        before,
        "the checkpoint was touched"
    );
    assert_eq!(
        std::fs::read_to_string(&not_ours).unwrap(),
        "my notes, not a trace"
    );
    // an earlier trace of ours is replaced
    let ours = out.path().join("again.h5");
    let p = ours.display().to_string();
    for _ in 0..2 {
        let (code, _, stderr, _) = run_mpi(1, &["--model", &m, "--trace", &p], &[], 60);
        assert_eq!(code, 0, "{stderr}");
    }
}

#[test]
fn concurrent_jobs_on_one_trace_path_never_mix_their_files() {
    // HDF5's file locking off, as on many parallel file systems
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("shared.h5");
    let p = path.display().to_string();
    let env = [("HDF5_USE_FILE_LOCKING", "FALSE")];
    let ok = ["--max-new-tokens", "4", "--trace", &p];
    let failing = ["--max-new-tokens", "4", "--trace", &p, "--timeout", "20"];
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run_mpi(2, &ok, &env, 60));
        let b = s.spawn(|| {
            let env = [env[0], ("QWEN3_MPI_FAULT", "error@0:decode:1")];
            run_mpi(2, &failing, &env, 60)
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a.0, 0, "{}", a.2);
    assert_ne!(b.0, 0, "{}", b.2);
    // whichever finished last owns the file, whole: its status and its own command line agree
    let file = hdf5::File::open(&path).unwrap();
    let status = read_attr(&file, "status");
    let command = read_attr(&file, "command_line");
    let timeout_given = command.contains("--timeout");
    match status.as_str() {
        "ok" => assert!(!timeout_given, "an ok file with the failing job's command line"),
        "failed" => assert!(timeout_given, "a failed file with the good job's command line"),
        other => panic!("status {other}"),
    }
    assert!(partial_files(out.path()).is_empty());
}

/// A copy of the trace at `path` in the layout of schema 1 (list attributes as JSON strings,
/// events without a `rank` column), beside it; its path.
fn schema_1_copy(path: &std::path::Path) -> String {
    use qwen3_mpi::trace::spans::{Span, SpanRow};
    let copy = path.with_file_name("tools-schema-1.h5");
    std::fs::copy(path, &copy).unwrap();
    let f = hdf5::File::append(&copy).unwrap();
    let text = |s: &str| s.parse::<hdf5::types::VarLenUnicode>().unwrap();
    f.delete_attr("schema_version").unwrap();
    f.new_attr::<u64>()
        .create("schema_version")
        .unwrap()
        .write_scalar(&1u64)
        .unwrap();
    for name in ["layer_split", "chunk_lengths", "chunks"] {
        f.delete_attr(name).unwrap();
    }
    f.new_attr::<hdf5::types::VarLenUnicode>()
        .create("layer_split")
        .unwrap()
        .write_scalar(&text("[4,4,4]"))
        .unwrap();
    let world: u64 = f.attr("world_size").unwrap().read_scalar().unwrap();
    for rank in 0..world {
        let group = f.group(&format!("ranks/{rank}")).unwrap();
        let rows: Vec<SpanRow> = group.dataset("events").unwrap().read_raw().unwrap();
        group.unlink("events").unwrap();
        let spans: Vec<Span> = rows.iter().map(SpanRow::span).collect();
        group
            .new_dataset_builder()
            .with_data(&spans)
            .create("events")
            .unwrap();
    }
    copy.display().to_string()
}

/// `trace fit-cost`: one-rank traces at three chunk lengths are fitted (every layer of every
/// chunk is one span of its chunk's length), and each trace's TTFT, and a two-rank run's, is
/// set beside its prediction. The job itself printed its chunk choice and kept it in the trace
/// with the prediction. (How close the predictions come is a benchmark's question: timings
/// here share the machine with the other tests.)
#[test]
fn fit_cost_fits_one_rank_traces_and_predicts_a_pipelined_run() {
    let out = tempfile::tempdir().unwrap();
    let trace = |name: &str| out.path().join(format!("{name}.h5")).display().to_string();
    let job = |ranks: usize, name: &str, chunk: Option<&str>| {
        let path = trace(name);
        let mut args = vec![
            "--synthetic-prompt",
            "256",
            "--max-new-tokens",
            "2",
            "--trace",
            &path,
        ];
        if let Some(chunk) = chunk {
            args.extend(["--chunk-size", chunk]);
        }
        let (code, _, stderr, _) = run_mpi(ranks, &args, &[], 120);
        assert_eq!(code, 0, "{stderr}");
        stderr
    };
    for chunk in ["16", "64", "256"] {
        job(1, &format!("c{chunk}"), Some(chunk));
    }
    let stderr = job(2, "r2", None);
    // the choice, as rank 0 printed it and as the trace keeps it
    let printed = stderr
        .lines()
        .find_map(|l| l.strip_prefix("qwen3-mpi: chunks: "))
        .unwrap_or_else(|| panic!("no chunk choice printed:\n{stderr}"));
    let file = hdf5::File::open(trace("r2")).unwrap();
    assert_eq!(read_attr(&file, "chunk_choice"), printed);
    assert!(
        printed.contains("predicted prefill") && printed.contains("cost model for the CPU"),
        "{printed}"
    );
    let predicted: f64 = file.attr("predicted_ttft_s").unwrap().read_scalar().unwrap();
    assert!(predicted > 0.0 && predicted.is_finite());
    let lengths: Vec<u64> = file.attr("chunk_lengths").unwrap().read_raw().unwrap();
    assert!(lengths.len() >= 4, "two chunks per rank at least: {lengths:?}");

    let (code, stdout, stderr) = run_cli(&[
        "trace",
        "fit-cost",
        &trace("c16"),
        &trace("c64"),
        &trace("c256"),
        "--predict",
        &trace("r2"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("fit over 252 LayerCompute spans of 3 traces (hidden 64, 12 layers)"),
        "{stdout}"
    );
    // by chunk length: 16 chunks x 12 layers of 16 tokens, 4 x 12 of 64, 12 of 256
    let positive = |field: &str| field.parse::<f64>().is_ok_and(|v| v > 0.0 && v.is_finite());
    for (len, spans) in [(16, 192), (64, 48), (256, 12)] {
        let row = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{len} tokens")))
            .unwrap_or_else(|| panic!("no row for {len} tokens:\n{stdout}"));
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields[2], spans.to_string(), "{row}");
        assert!(positive(fields[4]) && positive(fields[5]), "{row}");
    }
    // every trace's TTFT beside a prediction
    for name in ["c16", "c64", "c256", "r2"] {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("{name}.h5: ")))
            .unwrap_or_else(|| panic!("no TTFT line for {name}:\n{stdout}"));
        let ms = |word: &str| -> &str {
            let at = line.find(word).unwrap_or_else(|| panic!("{line}")) + word.len();
            line[at..].trim_start().split(' ').next().unwrap_or_default()
        };
        assert!(positive(ms("measured")) && positive(ms("predicted")), "{line}");
    }
    // one device class at a time: a copy that says it ran on a GPU is refused beside the others
    let gpu_copy = trace("c16-gpu");
    std::fs::copy(trace("c16"), &gpu_copy).unwrap();
    {
        let f = hdf5::File::append(&gpu_copy).unwrap();
        f.delete_attr("device").unwrap();
        f.new_attr::<hdf5::types::VarLenUnicode>()
            .create("device")
            .unwrap()
            .write_scalar(
                &"Cuda { gpu_id: 0 }"
                    .parse::<hdf5::types::VarLenUnicode>()
                    .unwrap(),
            )
            .unwrap();
    }
    let (code, _, stderr) = run_cli(&["trace", "fit-cost", &trace("c64"), &gpu_copy]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("c16-gpu.h5 ran on different devices (cpu and Cuda { gpu_id: 0 })"),
        "{stderr}"
    );
    let (code, _, stderr) = run_cli(&["trace", "fit-cost", "/nonexistent.h5"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("/nonexistent.h5"), "{stderr}");
}
