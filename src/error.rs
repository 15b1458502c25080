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
    /// An argument, option or input the user gave that cannot be used.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A model's forward pass gave outputs of the wrong number or shape (a bug or a
    /// model that does not fit the code, not the user's input).
    #[error("model: {0}")]
    Model(String),
    /// A weight file, training checkpoint or weights manifest that is missing, unreadable,
    /// corrupt or made for another network.
    #[error("{0}")]
    Weights(String),
    /// The compute backend failed: reading a tensor back from the device, a worker thread,
    /// or a browser API.
    #[error("backend: {0}")]
    Backend(String),
    /// A computation on usable inputs gave no result: a registration that did not converge,
    /// training that diverged, or the queries of a batch that failed (each reported before).
    #[error("{0}")]
    Failed(String),
    /// The user cancelled the run.
    #[error("cancelled")]
    Cancelled,
    /// Another error, with what it happened to (a file or case name) in front.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// `self` with `context` (e.g. the file it happened to) in front of its message.
    pub fn context(self, context: impl std::fmt::Display) -> Error {
        Error::Context {
            context: context.to_string(),
            source: Box::new(self),
        }
    }

    /// An I/O error with what it happened to (e.g. `cannot read <path>`) in front of its
    /// message; its kind is kept.
    pub fn io(what: impl std::fmt::Display, e: std::io::Error) -> Error {
        Error::Io(std::io::Error::new(e.kind(), format!("{what}: {e}")))
    }

    /// The error itself, or the one a chain of [`Error::Context`] wraps.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            e => e,
        }
    }

    /// Whether this is (or wraps) [`Error::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self.root(), Error::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_the_variants() {
        let cases = [
            (Error::InvalidArgument("x".into()), "invalid argument: x"),
            (
                Error::Model("3 masks for 2 boxes".into()),
                "model: 3 masks for 2 boxes",
            ),
            (
                Error::Weights("not a MedLAM weights file: x".into()),
                "not a MedLAM weights file: x",
            ),
            (
                Error::Backend("reading a tensor back".into()),
                "backend: reading a tensor back",
            ),
            (
                Error::Failed("registration: the affine degenerated".into()),
                "registration: the affine degenerated",
            ),
            (Error::Cancelled, "cancelled"),
            (
                Error::Corrupt("truncated".into()).context("a.nii.gz"),
                "a.nii.gz: corrupt NIfTI file: truncated",
            ),
            (
                Error::io(
                    "cannot read /x",
                    std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
                ),
                "cannot read /x: gone",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn context_keeps_the_variant_and_the_io_kind() {
        let e = Error::Cancelled.context("case 1").context("batch");
        assert!(e.is_cancelled());
        assert!(matches!(e.root(), Error::Cancelled));
        assert!(std::error::Error::source(&e).is_some());
        assert!(!Error::InvalidArgument("cancelled".into()).is_cancelled());
        let io = Error::io("cannot read /x", std::io::ErrorKind::NotFound.into());
        assert!(matches!(io, Error::Io(ref e) if e.kind() == std::io::ErrorKind::NotFound));
    }
}
