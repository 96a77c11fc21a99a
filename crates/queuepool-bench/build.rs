//! Records which code the bench is built from: the commit, and whether the sources that
//! go into the build differed from it. Every run prints it and writes it into its JSON,
//! so a figure names its code, and a binary left behind by another checkout that shares
//! the target directory (cargo gives the same artifact names to the same crates built
//! from two clones) says which code it really is.

use std::path::Path;

#[path = "src/git.rs"]
mod git;
use git::git;

/// What counts as "the code": the workspace crates this binary is built from (its path
/// dependencies, direct and through each other) and the workspace manifests; not the
/// other crates (an edit to them must not rebuild the bench) nor the docs.
const SOURCES: [&str; 6] = [
    "crates/queuepool",
    "crates/queuepool-postgres",
    "crates/queuepool-testkit",
    "crates/queuepool-bench",
    "Cargo.toml",
    "Cargo.lock",
];

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
    let root = Path::new(&manifest).join("../..");
    // Run again when a source changes (a directory is scanned as a whole) or the commit
    // or the index moves.
    for path in SOURCES {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    if let Some(dir) = git(&root, &["rev-parse", "--absolute-git-dir"]) {
        for file in ["HEAD", "index", "logs/HEAD"] {
            println!("cargo:rerun-if-changed={dir}/{file}");
        }
    }
    let commit = git(&root, &["rev-parse", "--short=12", "HEAD"]);
    let modified = commit.is_some() && {
        let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
        status.extend(SOURCES);
        git(&root, &status).is_some_and(|changes| !changes.is_empty())
    };
    println!(
        "cargo:rustc-env=QUEUEPOOL_BENCH_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    println!("cargo:rustc-env=QUEUEPOOL_BENCH_MODIFIED={modified}");
}
