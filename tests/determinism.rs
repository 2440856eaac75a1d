//! The same seed and chunk size give the same text across runs, rank counts, sync strategies
//! and layer splits; another seed gives another text (so sampling really depends on it). (Another
//! chunk size sums attention in another order, which can change a sampled token: each chunk
//! size is compared with one rank's run at that size.)

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
    let at = |chunk| sampled_text(1, "7", &["--chunk-size", chunk]);
    let (reference_19, reference_5) = (at("19"), at("5"));
    assert!(!reference_19.is_empty());
    for (ranks, args, reference) in [
        (
            2,
            &["--chunk-size", "19", "--sync", "allgather"][..],
            &reference_19,
        ),
        (
            3,
            &["--chunk-size", "19", "--sync", "allgather", "--layers", "2,6,4"][..],
            &reference_19,
        ),
        (3, &["--chunk-size", "5", "--sync", "ring"][..], &reference_5),
    ] {
        assert_eq!(
            &sampled_text(ranks, "7", args),
            reference,
            "{ranks} ranks {args:?}"
        );
    }
    assert_ne!(
        sampled_text(2, "8", &["--chunk-size", "19"]),
        reference_19,
        "another seed, the same text"
    );
}
