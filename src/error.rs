//! The library's error type: every failure a user can cause is one of these,
//! with a message that says what was wrong and, where possible, what to do.

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors reported to users (CLI prints them as one line, the web app shows them).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a NIfTI file: {0}")]
    NotNifti(String),
    #[error("unsupported NIfTI file: {0}")]
    Unsupported(String),
    #[error("corrupt NIfTI file: {0}")]
    Corrupt(String),
    #[error("DICOM: {0}")]
    Dicom(String),
    #[error("invalid volume: {0}")]
    InvalidVolume(String),
    #[error("mismatch: {0}")]
    Mismatch(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
