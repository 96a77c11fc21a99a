//! Runs git, for the build script (`build.rs` includes this file) and the test that
//! checks what it recorded (`code`).

use std::path::Path;
use std::process::Command;

/// `git -C root args...`, trimmed, if git ran and succeeded. `--no-optional-locks`: a
/// `git status` must not refresh the index, whose new time would run the build script,
/// and rebuild the bench, once more on the next build.
pub fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("--no-optional-locks")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
