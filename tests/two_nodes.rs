//! One job across two nodes simulated on this machine: Open MPI starts a daemon per "node"
//! through a launch agent that stands in for ssh, running the daemon here in a UTS namespace of
//! its own whose hostname is the node's (`unshare --uts`, as root). Open MPI then places ranks
//! 0-1 on `node-a` and 2-3 on `node-b`, so the job sees two nodes: node-local ranks 0 and 1 on
//! each, the across-nodes choices (the host allgather through MPI, not the node-shared
//! window), and hostnames that differ in the trace; its tokens equal one process's.
//!
//! What it does not prove: the ranks still share one kernel and its memory, so MPI moves the
//! bytes through shared memory or loopback rather than a network, and there are no GPUs (the
//! GPU index and GPU transports are not exercised).

mod common;

use common::*;

/// The launch agent: `AGENT HOST COMMAND...` runs COMMAND here with the hostname HOST.
fn launch_agent(dir: &std::path::Path) -> std::path::PathBuf {
    let agent = dir.join("node-agent");
    std::fs::write(
        &agent,
        "#!/bin/sh\n# stands in for ssh: $1 is the node, the rest the command\nnode=\"$1\"; shift\n\
         exec unshare --uts sh -c \"hostname $node && exec $*\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    agent
}

#[test]
fn a_job_across_two_simulated_nodes_takes_the_across_nodes_path_and_matches_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let agent = launch_agent(dir.path());
    let trace = dir.path().join("two-nodes.h5");
    let session = common::mpirun_session_dir();
    let args = ["--max-new-tokens", "4", "--chunk-size", "14", "--json"];
    let out = std::process::Command::new("timeout")
        .args(["-k", "5", "120", "mpirun", "--mca", "plm_rsh_agent"])
        .arg(&agent)
        .args(["--host", "node-a:2,node-b:2", "-n", "4"])
        .arg(env!("CARGO_BIN_EXE_qwen3-mpi"))
        .args(args)
        .arg("--trace")
        .arg(&trace)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("TMPDIR", session.path())
        .env("RUST_LOG", "info")
        .output()
        .expect("mpirun runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the two-node job failed (the agent needs root for `unshare --uts`):\n{stderr}"
    );
    for (rank, local, node) in [
        (0, 0, "node-a"),
        (1, 1, "node-a"),
        (2, 0, "node-b"),
        (3, 1, "node-b"),
    ] {
        let line = format!("node-local rank {local} of 2 on host {node}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("[rank {rank} ")) && l.ends_with(&line)),
            "rank {rank}: no `{line}` in\n{stderr}"
        );
    }
    assert!(
        stderr.contains("KV sync over host memory: allgather (the 4 ranks are on more than one node)"),
        "{stderr}"
    );
    let report = json_report(&stdout);
    assert_eq!(report["transport"], "host");
    let file = hdf5::File::open(&trace).unwrap();
    let hosts: Vec<hdf5::types::VarLenUnicode> = file.attr("hostnames").unwrap().read_raw().unwrap();
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    assert_eq!(hosts, ["node-a", "node-a", "node-b", "node-b"]);

    let (code, one, stderr, _) = run_mpi(1, &args, &[], 60);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        expected_ids(&report, "generated_ids"),
        expected_ids(&json_report(&one), "generated_ids"),
        "two nodes against one process"
    );
}
