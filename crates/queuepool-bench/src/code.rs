//! Which code this binary was built from (see `build.rs`).

use serde::Serialize;

/// The commit and state of the sources the binary was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Code {
    /// `git rev-parse --short=12 HEAD` at build time, or `unknown` (no git).
    pub commit: &'static str,
    /// The sources the binary is built from (its workspace crates, the workspace
    /// manifests) differed from that commit.
    pub modified: bool,
    /// The crate's directory at build time (not in the JSON: a local path).
    #[serde(skip)]
    pub built_in: &'static str,
}

/// This binary's code.
pub const CODE: Code = Code {
    commit: env!("QUEUEPOOL_BENCH_COMMIT"),
    modified: matches!(env!("QUEUEPOOL_BENCH_MODIFIED").as_bytes(), b"true"),
    built_in: env!("CARGO_MANIFEST_DIR"),
};

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code {}", self.commit)?;
        if self.modified {
            f.write_str(" with uncommitted changes")?;
        }
        write!(f, " (built in {})", self.built_in)
    }
}

#[cfg(test)]
mod tests {
    use super::CODE;

    /// The commit compiled in is the checkout's HEAD: a test binary that a commit did
    /// not rebuild (the build script not run again) would name the one before.
    #[test]
    fn the_commit_compiled_in_is_the_checkouts_head() {
        let head = crate::git::git(
            std::path::Path::new(CODE.built_in),
            &["rev-parse", "--short=12", "HEAD"],
        );
        match head {
            Some(head) => assert_eq!(CODE.commit, head),
            None => assert_eq!(CODE.commit, "unknown", "no git here, none at build time"),
        }
    }

    #[test]
    fn the_code_line_names_the_commit_and_says_when_sources_differed() {
        let mut code = CODE;
        code.commit = "0123456789ab";
        code.built_in = "/src/queuepool-bench";
        code.modified = false;
        assert_eq!(
            code.to_string(),
            "code 0123456789ab (built in /src/queuepool-bench)"
        );
        code.modified = true;
        assert_eq!(
            code.to_string(),
            "code 0123456789ab with uncommitted changes (built in /src/queuepool-bench)"
        );
    }
}
