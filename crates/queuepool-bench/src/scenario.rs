//! The three scenarios of issue 3.

/// One measured situation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// One task, checkout + return in a loop, on a current-thread runtime: the pool's
    /// own cost per operation, nothing else.
    Single,
    /// 64 tasks share a pool of 8 on a 2-worker runtime; each checks out, yields once,
    /// returns: the pool at its limit, waiters queueing, cross-thread hand-offs.
    Contended,
    /// 8 tasks on a pool of 8, same loop: never at the limit, but two threads touch the
    /// pool's shared state at once.
    Uncontended,
}

impl Scenario {
    /// All scenarios, in the order they run.
    pub const ALL: [Scenario; 3] = [Scenario::Single, Scenario::Contended, Scenario::Uncontended];

    /// The name used in the table, the JSON (`name` key) and `--scenario`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Single => "1-task",
            Scenario::Contended => "64-tasks-pool-8",
            Scenario::Uncontended => "8-tasks-pool-8",
        }
    }

    /// Parses a `--scenario` name.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Concurrent tasks running the loop.
    pub fn tasks(self) -> usize {
        match self {
            Scenario::Single => 1,
            Scenario::Contended => 64,
            Scenario::Uncontended => 8,
        }
    }

    /// Maximum pool size (same for every pool).
    pub fn pool_size(self) -> u32 {
        8
    }

    /// Worker threads of the tokio runtime (0: current-thread runtime).
    pub fn workers(self) -> usize {
        match self {
            Scenario::Single => 0,
            Scenario::Contended | Scenario::Uncontended => 2,
        }
    }
}
