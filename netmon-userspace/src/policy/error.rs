//! Why a policy cannot be read, changed or enforced: one line each, naming
//! the fix.

use std::path::PathBuf;

use netmon_common::policy::{MAX_RULES, MAX_RULES_PER_LIST};

use super::Cidr;
use crate::datapath::DatapathError;

/// A policy error.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A value as written is not valid: a CIDR, protocol, port, period,
    /// rule or quota; the text says which and how to write it.
    #[error("{0}")]
    Invalid(String),
    /// A line of a policy or blocklist file.
    #[error("{}:{line}: {reason}", path.display())]
    AtLine {
        /// The file.
        path: PathBuf,
        /// Its line, from 1.
        line: usize,
        /// What is wrong there.
        reason: String,
    },
    /// A policy or blocklist file cannot be read.
    #[error("{}: {cause}; check the {what} path", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// `--policy` or `blocklist`.
        what: &'static str,
        /// The OS error.
        cause: std::io::Error,
    },
    /// Two rules or quotas with one key.
    #[error("{shown} is defined twice (in {first} and in {second})")]
    Duplicate {
        /// The rule or quota, as shown.
        shown: String,
        /// Where it was first.
        first: &'static str,
        /// Where again.
        second: &'static str,
    },
    /// More rules and quotas apply to one address than the datapath holds.
    #[error(
        "{prefix} is covered by {count} rules and quotas; at most {MAX_RULES_PER_LIST} can apply \
         to one address: merge or remove some"
    )]
    Crowded {
        /// The address or prefix.
        prefix: Cidr,
        /// How many would apply.
        count: usize,
    },
    /// More rules and quotas than the datapath holds.
    #[error("more than {MAX_RULES} rules and quotas")]
    Full,
    /// No CLI rule matches what `unblock` named.
    #[error("no such rule; `netmon rules` lists them")]
    NoSuchRule,
    /// No quota of that name.
    #[error("no quota named '{0}'; `netmon quota list` lists them")]
    NoSuchQuota(String),
    /// A change the CLI cannot make: the item comes from the policy file.
    #[error("{what} comes from the policy file; {fix} there{}", if *.reread { " (netmon re-reads the file)" } else { "" })]
    InFile {
        /// `that rule`, `quota 'NAME'`.
        what: String,
        /// `remove it`, `change it`.
        fix: &'static str,
        /// Say that netmon re-reads the file.
        reread: bool,
    },
    /// The kernel's maps refused.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

impl From<String> for PolicyError {
    fn from(reason: String) -> Self {
        PolicyError::Invalid(reason)
    }
}

impl From<&str> for PolicyError {
    fn from(reason: &str) -> Self {
        PolicyError::Invalid(reason.to_string())
    }
}

impl From<crate::units::UnitError> for PolicyError {
    fn from(e: crate::units::UnitError) -> Self {
        PolicyError::Invalid(e.to_string())
    }
}
