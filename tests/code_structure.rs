//! The code's shape, checked on its sources: imports run one way (job → sync → transport), the
//! environment is read in one place, and the README lists every `QWEN3_MPI_*` variable.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::repo;

/// Every file under `dir` (relative to the repository) whose name ends with one of `exts`.
fn files_under(dir: &str, exts: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, exts, out);
            } else if exts.iter().any(|e| path.to_string_lossy().ends_with(e)) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo().join(dir), exts, &mut out);
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of `text` (outside comments) that name one of `modules` as a crate path.
fn lines_naming(text: &str, modules: &[&str]) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.split("//").next().unwrap_or_default();
            modules.iter().any(|m| {
                code.contains(&format!("crate::{m}::"))
                    || code.contains(&format!("crate::{m};"))
                    || code.contains(&format!("crate::{m}::{{"))
            })
        })
        .map(|(n, line)| (n + 1, line.trim().to_string()))
        .collect()
}

/// `file:line: text` of every line under `dirs` that names one of `modules`.
fn imports_of(dirs: &[&str], modules: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for dir in dirs {
        for path in files_under(dir, &[".rs"]) {
            for (n, line) in lines_naming(&read(&path), modules) {
                found.push(format!("{}:{n}: {line}", path.display()));
            }
        }
    }
    found
}

#[test]
fn no_module_of_sync_or_transport_imports_from_the_job() {
    let upward = imports_of(
        &["src/sync", "src/transport"],
        &["job", "cli::environment", "bench"],
    );
    assert!(
        upward.is_empty(),
        "imports reaching up into the job:\n{}",
        upward.join("\n")
    );
    let below = imports_of(&["src/abort"], &["job", "sync", "transport", "bench"]);
    assert!(
        below.is_empty(),
        "the abort layer reaches up:\n{}",
        below.join("\n")
    );
}

#[test]
fn the_import_scan_finds_uses_and_paths_but_not_comments() {
    let text = "use crate::job::failure::JobAbort;\n// crate::job::x in a comment\nlet w = crate::job::watchdog::Watchdog::start();\nuse crate::jobs::other;\n";
    let found: Vec<usize> = lines_naming(text, &["job"]).into_iter().map(|(n, _)| n).collect();
    assert_eq!(found, [1, 3]);
}

/// Every `QWEN3_MPI_*` name in `text`.
fn variables_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("QWEN3_MPI_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].trim_end_matches('_');
        if name != "QWEN3_MPI" {
            names.insert(name.to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_qwen3_mpi_variable_is_in_the_readme_table() {
    let mut used = BTreeSet::new();
    for dir in ["src", "scripts", "slurm", "jobs", "tests", ".ci"] {
        for path in files_under(
            dir,
            &[".rs", ".sh", ".slurm", ".py", ".c", ".cu", ".cuh", ".cpp", "run"],
        ) {
            used.extend(variables_in(&read(&path)));
        }
    }
    for file in ["build.rs", "results/qwen3_traces.py", "results/run_notebooks.py"] {
        used.extend(variables_in(&read(&repo().join(file))));
    }
    let readme = read(&repo().join("README.md"));
    let table: BTreeSet<String> = readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `QWEN3_MPI_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("QWEN3_MPI_{}", name.split('=').next().unwrap_or(name)))
        .collect();
    let missing: Vec<_> = used.difference(&table).collect();
    assert!(
        missing.is_empty(),
        "QWEN3_MPI_* variables missing from the README's table: {missing:?}"
    );
    let stale: Vec<_> = table.difference(&used).collect();
    assert!(
        stale.is_empty(),
        "the README's table lists variables nothing reads: {stale:?}"
    );
}

#[test]
fn outside_the_model_only_the_setup_reads_qwen3_mpi_variables() {
    let mut readers = Vec::new();
    for path in files_under("src", &[".rs"]) {
        let relative = path
            .strip_prefix(repo())
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        if relative.starts_with("src/model/") || relative == "src/cli/environment.rs" {
            continue;
        }
        for (n, line) in read(&path).lines().enumerate() {
            if line.contains("env::var") && (line.contains("QWEN3_MPI") || line.contains("_ENV")) {
                readers.push(format!("{relative}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        readers.is_empty(),
        "QWEN3_MPI_* variables read outside the setup (src/cli/environment.rs):\n{}",
        readers.join("\n")
    );
}
