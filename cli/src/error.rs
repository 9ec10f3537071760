//! The CLI's errors: one line on stderr, exit status 2 for usage and 1 for failures.

use std::process::ExitCode;

#[derive(Debug)]
pub enum CliError {
    /// The command line or its inputs are wrong (exit 2).
    Usage(String),
    /// The work failed (exit 1).
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::from(1),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<d1_sync::Error> for CliError {
    fn from(e: d1_sync::Error) -> Self {
        match e {
            d1_sync::Error::Config(m) => CliError::Usage(m),
            other => CliError::Failed(other.to_string()),
        }
    }
}
