//! HDF5's error text (its error stack, `ctime` timestamps that end in a newline) reaches the
//! user as one line per message, naming the file or flag: for trace files the tools cannot
//! read, and for a trace location the job cannot create.

mod common;

use std::path::Path;

use common::*;

/// Asserts that every stderr line is a whole `qwen3-mpi: error:` line (HDF5's text never
/// spills onto a line of its own) and that there are `count` of them.
fn assert_error_lines(stderr: &str, count: usize) -> Vec<&str> {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    for line in &lines {
        assert!(line.starts_with("qwen3-mpi: error: "), "{line:?} in:\n{stderr}");
    }
    assert_eq!(lines.len(), count, "stderr:\n{stderr}");
    lines
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn unreadable_trace_files_are_one_line_each() {
    let out = tempfile::tempdir().unwrap();
    let good = out.path().join("good.h5");
    let (code, _, stderr) = run_cli(&["--max-new-tokens", "2", "--trace", &shown(&good)]);
    assert_eq!(code, 0, "{stderr}");
    let bytes = std::fs::read(&good).unwrap();
    let cut = out.path().join("cut.h5");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let noise = out.path().join("noise.h5");
    std::fs::write(
        &noise,
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    // HDF5's "file read failed: time = <ctime>\n, filename = …" text
    let folder = out.path().join("folder.h5");
    std::fs::create_dir(&folder).unwrap();

    let bad = [&cut, &noise, &folder];
    let mut args = vec!["trace".to_string(), "summary".into(), shown(&good)];
    args.extend(bad.iter().map(|p| shown(p)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = run_cli(&args);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("good.h5")),
        "no row for the good file:\n{stdout}"
    );
    let lines = assert_error_lines(&stderr, bad.len() + 1);
    for (line, path) in lines.iter().zip(bad) {
        assert!(
            line.starts_with(&format!("qwen3-mpi: error: {}: ", shown(path))),
            "{line:?}"
        );
    }
    assert!(
        lines[2].contains("time = "),
        "the timestamped text: {:?}",
        lines[2]
    );
    assert_eq!(
        lines[3],
        "qwen3-mpi: error: trace summary: 3 of 4 files could not be read (see above)"
    );

    for path in bad {
        let json = shown(&out.path().join("out.json"));
        let (code, _, stderr) = run_cli(&["trace", "perfetto", &shown(path), "-o", &json]);
        assert_eq!(code, 1, "{stderr}");
        let lines = assert_error_lines(&stderr, 1);
        assert!(lines[0].contains(&shown(path)), "{:?}", lines[0]);
    }
}

#[test]
fn a_trace_location_hdf5_cannot_create_is_one_line_from_one_rank() {
    // the folder exists (so create_dir_all passes) but no file can be made in it, even as root
    let (code, _, stderr, secs) = run_mpi(2, &["--trace", "/proc/self/job.h5"], &[], 60);
    assert_eq!(code, 1, "{stderr}");
    assert!(secs < 20.0, "took {secs:.1} s");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("qwen3-mpi") || l.contains("H5"))
        .collect();
    assert_eq!(ours.len(), 1, "stderr:\n{stderr}");
    assert!(
        ours[0].starts_with(
            "qwen3-mpi: error: rank 0: --trace /proc/self/job.h5: cannot create file (H5Fcreate(): "
        ),
        "{:?}",
        ours[0]
    );
}
