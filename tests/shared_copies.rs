//! The project keeps copies of the shared contract files its tests, benches and deploy checks read
//! (`tests/data/shared/contract/`), so that it builds and tests on its own, without `../shared`
//! beside the checkout. Where `../shared` is there, the copies must still equal it.

use std::path::{Path, PathBuf};

/// Every file under `dir`, relative to it, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_copies_of_the_shared_contract_match_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let copies = root.join("tests/data/shared/contract");
    let ours = files(&copies);
    for needed in [
        "gateway.md",
        "openapi.yaml",
        "examples/update-contact.request.json",
        "examples/update-contact.response.json",
    ] {
        assert!(
            ours.contains(&PathBuf::from(needed)),
            "tests/data/shared/contract/{needed} is missing"
        );
    }
    let shared = root.join("../shared/contract");
    if !shared.is_dir() {
        // The point of the copies: a clone on its own still builds and tests.
        eprintln!(
            "skipped: {} is absent; the copies in tests/data/shared are used as they are",
            shared.display()
        );
        return;
    }
    let theirs = files(&shared);
    let refresh = "refresh with: cp -r ../shared/contract/. tests/data/shared/contract/";
    assert_eq!(
        ours, theirs,
        "the copies list other files than ../shared; {refresh}"
    );
    for rel in &ours {
        let a = std::fs::read(copies.join(rel)).unwrap();
        let b = std::fs::read(shared.join(rel)).unwrap();
        assert!(
            a == b,
            "tests/data/shared/contract/{} differs from ../shared; {refresh}",
            rel.display()
        );
    }
}
