//! Generated files must match the code that generates them.

use std::path::Path;

fn committed(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

#[test]
fn committed_crd_matches_the_rust_definition() {
    assert!(
        committed("crds/externalcontrols.extctl.dev.yaml") == extctl::crd::crd_yaml(),
        "crds/externalcontrols.extctl.dev.yaml is out of date: run \
         `cargo run -- crd > crds/externalcontrols.extctl.dev.yaml`"
    );
}
