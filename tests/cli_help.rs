//! The help text is the one description of the command line: every argument of every
//! subcommand has one, none names the code's internals, the README's flag table lists exactly
//! the flags `run` takes, and `--version` says what the binary is.

mod common;

use std::collections::BTreeSet;

use clap::CommandFactory;
use common::*;
use qwen3_mpi::cli::Cli;

/// Every command and subcommand, with its path ("qwen3-mpi trace summary").
fn commands() -> Vec<(String, clap::Command)> {
    fn walk(path: String, cmd: clap::Command, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" {
                walk(format!("{path} {}", sub.get_name()), sub.clone(), out);
            }
        }
        out.push((path, cmd));
    }
    let mut out = Vec::new();
    let mut root = Cli::command();
    root.build();
    walk("qwen3-mpi".into(), root, &mut out);
    out
}

#[test]
fn every_argument_of_every_subcommand_is_documented() {
    let mut bare = Vec::new();
    for (path, cmd) in commands() {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                bare.push(format!("{path}: {id}"));
            }
            // values are listed with their help once any of them has some: then all need it
            let values = arg.get_possible_values();
            if values.iter().any(|v| v.get_help().is_some()) {
                for v in values.iter().filter(|v| v.get_help().is_none()) {
                    bare.push(format!("{path}: {id} = {}", v.get_name()));
                }
            }
        }
        if cmd.get_about().is_none() && path != "qwen3-mpi" {
            bare.push(format!("{path}: (the subcommand itself)"));
        }
    }
    assert!(bare.is_empty(), "arguments without help:\n{}", bare.join("\n"));
}

/// Names of the Rust items in src/ a user could not know: snake_case with an underscore, or
/// CamelCase (plain lowercase words such as `tiny` or `host` are also user-facing values).
fn internal_names() -> BTreeSet<String> {
    fn walk(dir: &std::path::Path, names: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, names);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let words: Vec<&str> = text.split(|c: char| !(c.is_alphanumeric() || c == '_')).collect();
            for pair in words.windows(2) {
                if matches!(
                    pair[0],
                    "fn" | "struct" | "enum" | "const" | "static" | "trait" | "type" | "mod"
                ) {
                    let name = pair[1];
                    let camel = name.chars().skip(1).any(|c| c.is_ascii_uppercase());
                    if name.contains('_') || camel {
                        names.insert(name.to_string());
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    walk(&repo().join("src"), &mut names);
    names
}

/// What in `help` reads as code rather than as the program's interface.
fn internal_references(help: &str, internal: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    for marker in ["[`", "`]", "::"] {
        if help.contains(marker) {
            found.push(format!("`{marker}`"));
        }
    }
    for (i, quoted) in help.split('`').enumerate() {
        if i % 2 == 1 && internal.contains(quoted.trim_start_matches('-')) {
            found.push(format!("`{quoted}`"));
        }
    }
    found
}

#[test]
fn help_text_names_no_internal_items() {
    let internal = internal_names();
    assert!(internal.contains("split_prompt_balanced") && internal.contains("LayerPlan"));
    let mut leaks = Vec::new();
    for (path, mut cmd) in commands() {
        let help = cmd.render_long_help().to_string();
        for found in internal_references(&help, &internal) {
            leaks.push(format!("{path} --help: {found}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "internal names in the help text:\n{}",
        leaks.join("\n")
    );
}

#[test]
fn the_internal_name_scan_sees_a_rustdoc_link_and_a_function_name() {
    let internal = internal_names();
    let found = internal_references(
        "shorter ([`split_prompt_balanced`]); see `LayerPlan`, `tiny`",
        &internal,
    );
    assert_eq!(found, ["`[``", "``]`", "`split_prompt_balanced`", "`LayerPlan`"]);
}

#[test]
fn the_readme_flag_table_lists_exactly_the_flags_of_run() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("## Running a real checkpoint")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap();
    let mut in_table = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `--")) {
        let first_column = row.split(" | ").next().unwrap_or_default();
        for piece in first_column.split('`').skip(1).step_by(2) {
            for word in piece.split_whitespace().filter(|w| w.starts_with("--")) {
                in_table.insert(word.trim_end_matches(',').to_string());
            }
        }
    }
    let mut run = Cli::command();
    run.build();
    let run = run.find_subcommand("run").unwrap();
    let flags: BTreeSet<String> = run
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "help" | "version"))
        .map(|l| format!("--{l}"))
        .collect();
    let missing: Vec<_> = flags.difference(&in_table).collect();
    let unknown: Vec<_> = in_table.difference(&flags).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "README flag table: missing {missing:?}, not flags of run {unknown:?}"
    );
}

#[test]
fn version_names_the_commit_the_features_and_the_mpi_library() {
    let (code, stdout, stderr) = run_cli(&["--version"]);
    assert_eq!(code, 0, "{stderr}");
    let commit = env!("QWEN3_MPI_GIT_COMMIT");
    assert!(
        stdout.starts_with(&format!("qwen3-mpi {}\n", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("commit: {commit}\n")), "{stdout}");
    assert!(
        stdout.contains("features: none (CPU only") || stdout.contains("features: cuda"),
        "{stdout}"
    );
    let mpi = stdout
        .lines()
        .find_map(|l| l.strip_prefix("MPI library: "))
        .unwrap_or_else(|| panic!("no MPI library line in\n{stdout}"));
    assert!(mpi.contains("MPI") && mpi != "unknown", "{mpi}");
}
