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
        let (code, _, stderr, _) = run_mpi(ranks, &args, &[], 120);
        assert_eq!(code, 0, "{stderr}");
        let file = hdf5::File::open(&path).unwrap();
        assert_eq!(read_attr(&file, "status"), "ok");
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
