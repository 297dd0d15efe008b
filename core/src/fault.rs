//! Fault injection for the tests, through one variable: `IPCLINK_FAULT`, read once per
//! process. Each fault stands in for something a test cannot time from outside:
//!
//! - `kill-after-steps=N`: a live change kills its process (SIGKILL) once N steps are
//!   done, as `kill -9` in the middle of it would (every step must be idempotent);
//! - `slow-charge`: the node plugin's preallocation helper sleeps 3 s before it
//!   allocates (a slow preallocation must hold up no other call);
//! - `exit-after-claim`: the operator exits right after creating a link's claim, before
//!   any status is written (a restart must converge without duplicates).
//!
//! Anything else in the variable is ignored: no fault.

use std::sync::OnceLock;

/// A fault a test asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// See the module notes.
    KillAfterSteps(usize),
    /// See the module notes.
    SlowCharge,
    /// See the module notes.
    ExitAfterClaim,
}

impl Fault {
    /// The fault `value` names, if any.
    pub fn parse(value: &str) -> Option<Fault> {
        match value {
            "slow-charge" => Some(Fault::SlowCharge),
            "exit-after-claim" => Some(Fault::ExitAfterClaim),
            v => v
                .strip_prefix("kill-after-steps=")
                .and_then(|n| n.parse().ok())
                .map(Fault::KillAfterSteps),
        }
    }
}

/// The fault of this process (`IPCLINK_FAULT`), if any.
pub fn active() -> Option<Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    *FAULT.get_or_init(|| {
        std::env::var("IPCLINK_FAULT")
            .ok()
            .as_deref()
            .and_then(Fault::parse)
    })
}

/// Whether the fault `f` is the one asked for.
pub fn is(f: Fault) -> bool {
    active() == Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_named_and_anything_else_is_none() {
        assert_eq!(Fault::parse("slow-charge"), Some(Fault::SlowCharge));
        assert_eq!(
            Fault::parse("exit-after-claim"),
            Some(Fault::ExitAfterClaim)
        );
        assert_eq!(
            Fault::parse("kill-after-steps=3"),
            Some(Fault::KillAfterSteps(3))
        );
        for other in ["", "kill-after-steps=", "kill-after-steps=x", "slow", "1"] {
            assert_eq!(Fault::parse(other), None, "{other:?}");
        }
    }
}
