//! The same seed gives the same text across runs, rank counts, sync strategies and chunk
//! sizes; another seed gives another text (so sampling really depends on it).

mod common;

use common::*;

fn sampled_text(ranks: usize, seed: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "--temperature",
        "1.0",
        "--top-p",
        "0.95",
        "--seed",
        seed,
        "--max-new-tokens",
        "12",
        "--json",
    ];
    args.extend(extra);
    let (code, stdout, stderr, _) = run_mpi(ranks, &args, &[], 60);
    assert_eq!(code, 0, "{ranks} ranks {extra:?}: {stderr}");
    json_report(&stdout)["text"].as_str().unwrap().to_owned()
}

#[test]
fn the_same_seed_gives_the_same_text_everywhere() {
    let reference = sampled_text(1, "7", &[]);
    assert!(!reference.is_empty());
    for (ranks, extra) in [
        (1, &[][..]),
        (2, &["--sync", "allgather"][..]),
        (3, &["--sync", "ring", "--chunk-size", "5"][..]),
        (3, &["--sync", "allgather", "--layers", "2,6,4"][..]),
    ] {
        assert_eq!(
            sampled_text(ranks, "7", extra),
            reference,
            "{ranks} ranks {extra:?}"
        );
    }
    assert_ne!(
        sampled_text(2, "8", &[]),
        reference,
        "another seed, the same text"
    );
}
