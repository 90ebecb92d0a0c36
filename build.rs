//! Stamps `gateway_build_info{revision, rustc}`: the git commit the binary was built from
//! (`GIT_REVISION` when set, as in a container build without `.git`; `unknown` when building
//! from a tarball) and the compiler's version.

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_REVISION");
    let revision = match std::env::var("GIT_REVISION") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_string(),
        _ => git_revision().unwrap_or_else(|| "unknown".into()),
    };
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // "rustc 1.85.0 (4d91de4e4 2025-02-17)" -> "1.85.0"
    let rustc = output(&rustc, &["--version"])
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CGW_BUILD_REVISION={revision}");
    println!("cargo:rustc-env=CGW_BUILD_RUSTC={rustc}");
}

/// The commit of HEAD, with the files to watch so that a new commit rebuilds the stamp; `None`
/// outside a git checkout.
fn git_revision() -> Option<String> {
    let here = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let git = |args: &[&str]| {
        let mut all = vec!["-C", here.as_str()];
        all.extend_from_slice(args);
        output("git", &all)
    };
    let revision = git(&["rev-parse", "--short=12", "HEAD"])?;
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = [
        git(&["rev-parse", "--git-path", "HEAD"]),
        branch.and_then(|r| git(&["rev-parse", "--git-path", &r])),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ];
    for path in watched.into_iter().flatten() {
        let path = std::path::Path::new(&here).join(path);
        // A path that does not exist would rerun this script, and rebuild the crate, every time.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Some(revision)
}
