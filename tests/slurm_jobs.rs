//! The batch scripts in jobs/ under a real Slurm: `slurm/test-cluster.sh` starts munged,
//! slurmctld and slurmd on this machine (once per test binary, stopped when it exits), and each
//! test submits a script unchanged with `sbatch --wait` (overriding on the command line only
//! `--gpus-per-task=0` for this GPU-less node, the time limit, and where logs and traces go),
//! then checks the job's exit state and its HDF5 traces.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// Longest wait for one job (queueing included) before the test fails with its logs.
const JOB_LIMIT_S: u64 = 120;

/// The running test cluster of this test binary.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// Starts the test cluster on first use; it is stopped when the test binary exits.
fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        stop_clusters_of_dead_test_runs();
        let pid = std::process::id();
        let cluster = Cluster {
            dir: std::env::temp_dir().join(format!("qwen3-mpi-slurm-{pid}")),
            port: 17000 + (pid % 4000) as u16 * 2,
        };
        let out = cluster.script("start").output().expect("bash runs");
        assert!(
            out.status.success(),
            "the test cluster did not start (Debian packages slurmctld slurmd slurm-client munge: \
             scripts/system-deps.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SAFETY: registers a plain extern "C" fn that takes no arguments.
        unsafe { libc::atexit(stop_cluster_at_exit) };
        cluster
    })
}

impl Cluster {
    /// `slurm/test-cluster.sh ACTION` for this cluster.
    fn script(&self, action: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("slurm/test-cluster.sh"))
            .arg(action)
            .env("QWEN3_SLURM_DIR", &self.dir)
            .env("QWEN3_SLURM_PORT", self.port.to_string());
        cmd
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }

    /// A Slurm client command (sbatch, scontrol, …) that talks to this cluster only.
    fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLURM_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("SLURM_CONF", self.conf());
        cmd
    }

    fn daemon_logs(&self) -> String {
        let out = self.script("logs").output().expect("bash runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

extern "C" fn stop_cluster_at_exit() {
    if let Some(cluster) = CLUSTER.get() {
        let _ = cluster.script("stop").output();
        let _ = std::fs::remove_dir_all(&cluster.dir);
    }
}

/// A test binary that was killed leaves its cluster running: stop those whose process is gone.
fn stop_clusters_of_dead_test_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("qwen3-mpi-slurm-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let stale = Cluster {
            dir: entry.path(),
            port: 0,
        };
        let _ = stale.script("stop").output();
        let _ = std::fs::remove_dir_all(&stale.dir);
    }
}

/// A finished batch job: its id, `sbatch --wait`'s exit code, and its folder (traces and the
/// Slurm log).
struct Job {
    id: String,
    code: i32,
    dir: tempfile::TempDir,
}

impl Job {
    /// Every Slurm log of the job, for failure messages.
    fn logs(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().filter_map(|e| e.ok()) {
            if entry.path().extension().is_some_and(|e| e == "out") {
                let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
                text += &format!("==> {} <==\n{log}\n", entry.path().display());
            }
        }
        text
    }

    fn trace(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `sbatch --wait SCRIPT` from the repository root with the built binary, traces and logs in a
/// new folder; fails the test with the logs if the job is not done within [`JOB_LIMIT_S`].
fn submit(script: &str, sbatch_args: &[&str], env: &[(&str, &str)]) -> Job {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("qwen3-test-{}", dir.path().file_name().unwrap().to_string_lossy());
    let log = if sbatch_args.iter().any(|a| a.starts_with("--array")) {
        "slurm-%A_%a.out"
    } else {
        "slurm-%j.out"
    };
    let session = dir.path().join("tmp");
    std::fs::create_dir(&session).unwrap();
    let mut cmd = cluster.client("timeout");
    cmd.current_dir(repo())
        .args([
            "-k",
            "5",
            &JOB_LIMIT_S.to_string(),
            "sbatch",
            "--wait",
            "--parsable",
        ])
        .arg(format!("--job-name={name}"))
        .arg(format!("--output={}", dir.path().join(log).display()))
        .args(["--time=2", "--gpus-per-task=0"])
        .args(sbatch_args)
        .arg(script)
        .env("QWEN3_MPI_BIN", env!("CARGO_BIN_EXE_qwen3-mpi"))
        .env("RUNS_DIR", dir.path())
        // Session files of this job's MPI apart from other jobs' (common::mpirun_session_dir).
        .env("TMPDIR", &session)
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        // The node has fewer cores than ranks: waiting ranks yield instead of spinning.
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        .env("RUST_LOG", "error");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("timeout and sbatch run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let code = out.status.code().unwrap_or(-1);
    if code == 124 || code == 137 {
        let _ = cluster.client("scancel").arg(format!("--name={name}")).output();
    }
    let job = Job {
        id: stdout.trim().split(';').next().unwrap_or_default().to_string(),
        code,
        dir,
    };
    assert!(
        code != 124 && code != 137 && !job.id.is_empty(),
        "{script}: no result within {JOB_LIMIT_S} s (sbatch exit {code}: {})\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        job.logs(),
        cluster.daemon_logs()
    );
    job
}

/// The fields of each job or array task of `id`, from `scontrol show job`.
fn job_fields(id: &str) -> Vec<HashMap<String, String>> {
    let out = cluster()
        .client("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            line.split_whitespace()
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// (JobState, ExitCode) of each job or array task of `id`, from `scontrol show job`.
fn job_states(id: &str) -> Vec<(String, String)> {
    let out = cluster()
        .client("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let fields: HashMap<&str, &str> = line
                .split_whitespace()
                .filter_map(|f| f.split_once('='))
                .collect();
            let field = |key| fields.get(key).copied().unwrap_or("?").to_string();
            (field("JobState"), field("ExitCode"))
        })
        .collect()
}

fn assert_completed(job: &Job, tasks: usize) {
    assert_eq!(job.code, 0, "sbatch --wait exit code\n{}", job.logs());
    let states = job_states(&job.id);
    assert_eq!(states.len(), tasks, "scontrol show job {}: {states:?}", job.id);
    for (state, exit) in &states {
        assert_eq!(
            (state.as_str(), exit.as_str()),
            ("COMPLETED", "0:0"),
            "{}",
            job.logs()
        );
    }
}

fn text_attr(file: &hdf5::File, name: &str) -> String {
    file.attr(name)
        .unwrap()
        .read_scalar::<hdf5::types::VarLenUnicode>()
        .unwrap()
        .to_string()
}

fn int_attr(file: &hdf5::File, name: &str) -> u64 {
    file.attr(name).unwrap().read_scalar::<u64>().unwrap()
}

/// Opens a trace of a successful 3-rank run and checks what every such trace holds.
fn open_ok_trace(job: &Job, name: &str, new_tokens: usize) -> hdf5::File {
    open_ok_trace_of(job, name, new_tokens, 3)
}

/// As [`open_ok_trace`], for a run of `ranks` ranks.
fn open_ok_trace_of(job: &Job, name: &str, new_tokens: usize, ranks: u64) -> hdf5::File {
    let path = job.trace(name);
    let file = hdf5::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), job.logs()));
    assert_eq!(text_attr(&file, "status"), "ok");
    assert_eq!(int_attr(&file, "world_size"), ranks, "{}", job.logs());
    let generated: Vec<u32> = file.dataset("output/generated_ids").unwrap().read_raw().unwrap();
    assert_eq!(generated.len(), new_tokens);
    file
}

#[test]
fn prefill_job_runs_three_ranks_through_srun_pmix_and_writes_its_trace() {
    // the script's own size: 1 node x 3 tasks, 4 CPUs each
    let env = [("PROMPT", "Slurm starts three ranks"), ("MAX_NEW_TOKENS", "4")];
    let job = submit("jobs/prefill.slurm", &[], &env);
    assert_completed(&job, 1);
    let log = job.logs();
    assert!(log.contains("launch: srun --mpi=pmix"), "{log}");
    assert!(
        log.contains(": 3 tasks (1 x 3 per node; 4 CPUs and 0 GPUs per task)"),
        "{log}"
    );
    let fields = &job_fields(&job.id)[0];
    assert_eq!(
        fields.get("NumTasks").map(String::as_str),
        Some("3"),
        "{fields:?}"
    );
    assert_eq!(
        fields.get("CPUs/Task").map(String::as_str),
        Some("4"),
        "{fields:?}"
    );
    open_ok_trace(&job, &format!("{}.h5", job.id), 4);
}

#[test]
fn prefill_job_takes_its_size_from_nodes_times_tasks_per_node() {
    let env = [("MAX_NEW_TOKENS", "2"), ("SYNTHETIC_PROMPT", "32")];
    let job = submit("jobs/prefill.slurm", &["--nodes=1", "--ntasks-per-node=4"], &env);
    assert_completed(&job, 1);
    open_ok_trace_of(&job, &format!("{}.h5", job.id), 2, 4);
}

#[test]
fn prefill_job_falls_back_to_mpirun_where_srun_has_no_pmix() {
    // An srun whose MPI plugin list lacks pmix, first on the job's PATH.
    let which = Command::new("sh")
        .args(["-c", "command -v srun"])
        .output()
        .unwrap();
    let real_srun = String::from_utf8_lossy(&which.stdout).trim().to_string();
    let bin = tempfile::tempdir().unwrap();
    let shim = bin.path().join("srun");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\n[ \"$1\" = --mpi=list ] && {{ echo 'MPI plugin types are...'; echo '\tnone'; exit 0; }}\nexec {real_srun} \"$@\"\n"
        ),
    )
    .unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&shim, executable).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [
        ("PATH", path.as_str()),
        ("SYNTHETIC_PROMPT", "24"),
        ("MAX_NEW_TOKENS", "3"),
    ];
    let job = submit("jobs/prefill.slurm", &[], &env);
    assert_completed(&job, 1);
    let log = job.logs();
    assert!(
        log.contains("launch: mpirun ('srun --mpi=list' has no pmix)"),
        "{log}"
    );
    open_ok_trace(&job, &format!("{}.h5", job.id), 3);
}

#[test]
fn sweep_array_writes_one_trace_per_task_with_its_combination_and_its_tasks_do_not_overlap() {
    // the binary behind a wrapper that notes when each of its processes ran
    let times = tempfile::tempdir().unwrap();
    let wrapper = times.path().join("qwen3-mpi");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nlog={}/task-$SLURM_ARRAY_TASK_ID.$$\necho \"start $(date +%s.%N)\" >$log\n\
             {} \"$@\"; code=$?\necho \"end $(date +%s.%N)\" >>$log\nexit $code\n",
            times.path().display(),
            env!("CARGO_BIN_EXE_qwen3-mpi")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bin = wrapper.display().to_string();
    let env = [
        ("CHUNK_SIZES", "8"),
        ("SYNCS", "allgather ring"),
        ("TRANSPORTS", "auto"),
        ("SYNTHETIC_PROMPT", "32"),
        ("MAX_NEW_TOKENS", "2"),
        ("QWEN3_MPI_BIN", bin.as_str()),
    ];
    let job = submit("jobs/sweep.slurm", &["--array=0-1"], &env);
    assert_completed(&job, 2);
    for (task, sync) in ["allgather", "ring"].iter().enumerate() {
        let file = open_ok_trace(&job, &format!("{}_{task}.h5", job.id), 2);
        assert_eq!(text_attr(&file, "sync_strategy"), *sync, "task {task}");
        assert_eq!(int_attr(&file, "chunk_size"), 8, "task {task}");
    }
    // [first start, last end] of each task's ranks: one task ends before the other starts
    let window = |task: usize| -> (f64, f64) {
        let mut start = f64::MAX;
        let mut end = f64::MIN;
        for entry in std::fs::read_dir(times.path()).unwrap().filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("task-{task}.")) {
                continue;
            }
            for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
                match line.split_once(' ') {
                    Some(("start", t)) => start = start.min(t.parse().unwrap()),
                    Some(("end", t)) => end = end.max(t.parse().unwrap()),
                    _ => {}
                }
            }
        }
        assert!(start < end, "task {task}: no times of its ranks\n{}", job.logs());
        (start, end)
    };
    let (first, second) = (window(0), window(1));
    assert!(
        first.1 <= second.0 || second.1 <= first.0,
        "the sweep's tasks ran at the same time: {first:?} and {second:?}"
    );
}

#[test]
fn sweep_task_past_the_grid_fails_naming_the_array_to_submit() {
    let out = Command::new("bash")
        .arg(repo().join("jobs/sweep.slurm"))
        .env("CHUNK_SIZES", "8 16")
        .env("SYNCS", "ring")
        .env("TRANSPORTS", "auto")
        .env("SLURM_ARRAY_TASK_ID", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("= 2 combinations; submit with --array=0-1"),
        "{stderr}"
    );
}

#[test]
fn comm_bench_job_times_the_kv_sync_and_writes_its_table() {
    let env = [
        ("SIZES", "4KiB,64KiB"),
        ("ITERS", "2"),
        ("SYNCS", "allgather,ring"),
    ];
    let job = submit("jobs/comm-bench.slurm", &[], &env);
    assert_completed(&job, 1);
    let path = job.trace(&format!("comm-bench/{}.h5", job.id));
    let file = hdf5::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), job.logs()));
    assert_eq!(text_attr(&file, "status"), "ok");
    assert_eq!(int_attr(&file, "world_size"), 3);
    let rows: Vec<qwen3_mpi::bench::comm_table::CommRow> = file.dataset("comm").unwrap().read_raw().unwrap();
    // per size: the MPI baseline, then allgather over the host transport (the node-shared
    // window), the host allgather through MPI beside it, and the ring (CPU)
    let names: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.transport.to_string(), r.sync.to_string()))
        .collect();
    let per_size = [
        ("mpi-host-baseline", "allgather"),
        ("host", "allgather"),
        ("host-mpi", "allgather"),
        ("host", "ring"),
    ];
    let expected: Vec<(String, String)> = per_size
        .iter()
        .chain(per_size.iter())
        .map(|(t, s)| (t.to_string(), s.to_string()))
        .collect();
    assert_eq!(names, expected, "{}", job.logs());
    assert!(rows
        .iter()
        .all(|r| r.iters == 2 && r.ranks == 3 && r.median_s > 0.0));
}
