//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets' own
//! bodies (`fuzz/fuzz_targets/common.rs`) on stable Rust, so every `cargo test` re-checks what
//! fuzzing found and the properties each target asserts. Fuzzing itself: fuzz/README.md.

#[path = "../fuzz/fuzz_targets/common.rs"]
mod common;

use std::path::PathBuf;

/// Every file of `fuzz/corpus/<target>/` (or of `$EXTCTL_FUZZ_CORPUS/<target>/`, to replay a
/// working corpus on stable), in name order.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = std::env::var_os("EXTCTL_FUZZ_CORPUS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus"),
        PathBuf::from,
    );
    let dir = root.join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no inputs", dir.display());
    files
        .into_iter()
        .map(|file| {
            let bytes = std::fs::read(&file).unwrap();
            (file, bytes)
        })
        .collect()
}

/// Runs `target` on each input, naming the input that broke a property.
fn replay(name: &str, target: fn(&[u8])) {
    for (file, bytes) in corpus(name) {
        if let Err(panic) = std::panic::catch_unwind(|| target(&bytes)) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("{}: {message}", file.display());
        }
    }
}

#[test]
fn request_corpus() {
    replay("request", common::request);
}

/// The forgery oracle runs only on accepted calls: the corpus must hold some.
#[test]
fn request_corpus_has_accepted_calls() {
    let answers: Vec<Option<u16>> = corpus("request")
        .iter()
        .map(|(_, bytes)| common::request_answer(bytes))
        .collect();
    let accepted = answers.iter().filter(|a| **a == Some(200)).count();
    let refused = answers
        .iter()
        .filter(|a| a.is_some_and(|c| c != 200))
        .count();
    eprintln!(
        "request corpus: {accepted} accepted, {refused} refused, of {}",
        answers.len()
    );
    assert!(accepted >= 5, "only {accepted} accepted calls");
}

/// The hand-written seeds do what their names say, so the oracle is not vacuous: `accept-*`
/// calls (signed with `{now}` and `{sig}`) are recorded, `reject-*` calls are not.
#[test]
fn request_seeds_are_accepted_or_refused_as_named() {
    for (file, bytes) in corpus("request") {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let answer = common::request_answer(&bytes);
        if name.starts_with("accept-") {
            assert_eq!(answer, Some(200), "{name}");
        } else if name.starts_with("reject-") || name.starts_with("vector-") {
            assert!(answer.is_some_and(|code| code != 200), "{name}: {answer:?}");
        }
    }
}

#[test]
fn duration_corpus() {
    replay("duration", common::duration);
}

#[test]
fn manifests_corpus() {
    replay("manifests", common::manifests);
}
