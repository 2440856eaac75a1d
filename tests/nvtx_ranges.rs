//! NVTX ranges (src/trace/nvtx.rs): with a tool injected, every rank opens a range named as the
//! trace's span for each layer compute, KV sync and hidden-state send and receive, on the thread
//! that does the work, in the `qwen3-mpi` domain. The tool is tests/fixtures/nvtx_injection.c
//! (compiled here with `cc`), standing in for Nsight Systems: NVTX3 loads it from
//! NVTX_INJECTION64_PATH, as it loads Nsight's.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use common::*;
use qwen3_mpi::trace::span_names::span_name;
use qwen3_mpi::trace::spans::{Span, SpanKind, SpanRow};

/// One push or pop the tool saw.
struct Event {
    rank: usize,
    thread: u64,
    push: bool,
    domain: String,
    name: String,
}

/// Compiles the injection library into `dir`.
fn build_injection(dir: &Path) -> PathBuf {
    let lib = dir.join("libnvtx_log.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = std::process::Command::new(&cc)
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(repo().join("tests/fixtures/nvtx_injection.c"))
        .arg("-lpthread")
        .status()
        .unwrap_or_else(|e| panic!("{cc} runs: {e}"));
    assert!(status.success(), "{cc} compiles the NVTX injection library");
    lib
}

/// Every line of every rank's log, in each process's order.
fn read_events(dir: &Path) -> Vec<Event> {
    let mut events = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 5, "log line {line:?}");
            events.push(Event {
                rank: fields[0].parse().unwrap(),
                thread: fields[1].parse().unwrap(),
                push: fields[2] == "push",
                domain: fields[3].to_owned(),
                name: fields[4].to_owned(),
            });
        }
    }
    events
}

/// The NVTX range names of the spans the test compares, by the name's start.
const KINDS: [(SpanKind, &str); 4] = [
    (SpanKind::LayerCompute, "layer "),
    (SpanKind::KvSync, "kv-sync "),
    (SpanKind::Send, "send chunk "),
    (SpanKind::Recv, "recv chunk "),
];

#[test]
fn with_a_tool_attached_each_rank_names_its_layers_kv_syncs_and_hidden_states_as_its_trace_does() {
    let out = tempfile::tempdir().unwrap();
    let lib = build_injection(out.path());
    let logs = out.path().join("ranges");
    std::fs::create_dir(&logs).unwrap();
    let trace = out.path().join("job.h5");
    let trace_arg = trace.display().to_string();
    let args = ["--max-new-tokens", "3", "--trace", &trace_arg, "--json"];
    let env = [
        ("NVTX_INJECTION64_PATH", lib.to_str().unwrap()),
        ("NVTX_TEST_RANGES_DIR", logs.to_str().unwrap()),
    ];
    let (code, _, stderr, _) = run_mpi(2, &args, &env, 120);
    assert_eq!(code, 0, "{stderr}");
    let events = read_events(&logs);
    let file = hdf5::File::open(&trace).unwrap();
    let split: Vec<u64> = file.attr("layer_split").unwrap().read_raw().unwrap();

    for rank in 0..2 {
        let mine: Vec<&Event> = events.iter().filter(|e| e.rank == rank).collect();
        assert!(
            mine.iter().all(|e| e.domain == "qwen3-mpi"),
            "rank {rank}: a range outside the qwen3-mpi domain"
        );
        // every range ends, on the thread that opened it
        let mut depth: BTreeMap<u64, i64> = BTreeMap::new();
        for e in &mine {
            let d = depth.entry(e.thread).or_default();
            *d += if e.push { 1 } else { -1 };
            assert!(*d >= 0, "rank {rank} thread {}: a pop without its push", e.thread);
        }
        assert!(
            depth.values().all(|&d| d == 0),
            "rank {rank}: ranges left open {depth:?}"
        );

        let spans: Vec<Span> = file
            .dataset(&format!("ranks/{rank}/events"))
            .unwrap()
            .read_raw::<SpanRow>()
            .unwrap()
            .iter()
            .map(SpanRow::span)
            .collect();
        let mut threads = HashMap::new();
        for (kind, prefix) in KINDS {
            let ranges: Vec<&&Event> = mine
                .iter()
                .filter(|e| e.push && e.name.starts_with(prefix))
                .collect();
            let mut named: Vec<&str> = ranges.iter().map(|e| e.name.as_str()).collect();
            let mut expected: Vec<String> = spans
                .iter()
                .filter(|s| s.kind == kind)
                .map(|s| span_name(kind, &s.at()))
                .collect();
            named.sort_unstable();
            expected.sort_unstable();
            assert_eq!(
                named, expected,
                "rank {rank}: the {kind:?} ranges against the trace's spans"
            );
            let on: BTreeSet<u64> = ranges.iter().map(|e| e.thread).collect();
            threads.insert(kind, on);
        }
        // what Nsight shows, spelled out: layer and chunk, the peer of each hidden state
        let has = |name: &str| mine.iter().any(|e| e.push && e.name == name);
        let first_layer = split[..rank].iter().sum::<u64>();
        let kv_sync = format!("kv-sync layer {first_layer} chunk 0");
        assert!(has(&kv_sync), "rank {rank}: no range {kv_sync:?}");
        if rank == 0 {
            assert!(
                has("layer 0 chunk 1") && has("send chunk 1 to rank 1"),
                "rank 0's ranges"
            );
        } else {
            assert!(has("recv chunk 1 from rank 0"), "rank 1's ranges");
        }
        // compute, sends and receives on one thread; the KV sync on the communication thread
        let compute = &threads[&SpanKind::LayerCompute];
        assert_eq!(
            compute.len(),
            1,
            "rank {rank}: layer ranges on threads {compute:?}"
        );
        let hidden = if rank == 0 { SpanKind::Send } else { SpanKind::Recv };
        assert_eq!(
            &threads[&hidden], compute,
            "rank {rank}: hidden states off the compute thread"
        );
        let sync = &threads[&SpanKind::KvSync];
        assert!(
            sync.len() == 1 && sync.is_disjoint(compute),
            "rank {rank}: KV sync ranges on {sync:?}, compute on {compute:?}"
        );
    }
}
