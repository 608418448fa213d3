//! The runtime's one error type: a plain enum with structured variants (no_std, no `thiserror`).
//! Every message names the problem and, where there is one, what to do about it.

use core::fmt;

/// Which part of a checkpoint a [`Error::Truncated`] or [`Error::OutOfBounds`] refers to.
pub type Section = &'static str;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The file does not start with the `.edge` magic.
    BadMagic { found: [u8; 8] },
    /// A format version this build cannot read.
    UnsupportedVersion { found: u32, supported: u32 },
    /// The file is shorter than its header says (an interrupted copy or download).
    Truncated { section: Section, needed: u64, available: u64 },
    /// A stored checksum does not match the bytes (corruption).
    ChecksumMismatch { what: alloc::string::String, stored: u64, computed: u64 },
    /// An offset, length or count points outside its section, or is otherwise inconsistent.
    Corrupt { what: alloc::string::String },
    /// A tensor encoding or metadata type id that this build does not know.
    UnknownEncoding { tensor: alloc::string::String, id: u8 },
    /// A tensor the model needs is absent.
    MissingTensor { name: alloc::string::String },
    /// A tensor has a shape other than the model's config implies.
    ShapeMismatch { name: alloc::string::String, expected: alloc::vec::Vec<u64>, found: alloc::vec::Vec<u64> },
    /// A metadata key the model needs is absent or has the wrong type.
    MissingMeta { key: &'static str },
    /// The checkpoint describes an architecture this runtime does not run.
    UnsupportedArchitecture { arch: alloc::string::String },
    /// A slice inside the checkpoint is not aligned for its element type.
    Misaligned { what: alloc::string::String, align: usize },
    /// A caller asked for something outside the model's limits (context, token id, view).
    InvalidArgument { what: alloc::string::String },
    /// The requested feature is not compiled into this build (e.g. `cuda`).
    NotCompiled { feature: &'static str, hint: &'static str },
    /// The forward pass produced NaN or infinite logits (corrupt or overflowing weights).
    NonFinite { position: usize },
    /// A GPU backend could not start or run (no driver, no device, a kernel failed to build).
    Device { message: alloc::string::String },
    /// An I/O error from the std-only loaders.
    Io { path: alloc::string::String, message: alloc::string::String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMagic { found } => write!(
                f,
                "not an .edge checkpoint (magic {found:02x?}); pack a model first with `edge-pack`"
            ),
            Error::UnsupportedVersion { found, supported } => write!(
                f,
                "checkpoint format version {found} is not supported (this build reads version {supported}); re-pack it with a matching `edge-pack`"
            ),
            Error::Truncated { section, needed, available } => write!(
                f,
                "checkpoint is truncated in {section}: needs {needed} bytes, file has {available}; copy or re-pack the file"
            ),
            Error::ChecksumMismatch { what, stored, computed } => write!(
                f,
                "checksum mismatch in {what} (stored {stored:016x}, computed {computed:016x}): the file is corrupt; re-pack or re-copy it"
            ),
            Error::Corrupt { what } => write!(f, "corrupt checkpoint: {what}; re-pack the model"),
            Error::UnknownEncoding { tensor, id } => write!(
                f,
                "tensor '{tensor}' uses encoding id {id}, unknown to this build; upgrade edge-run or re-pack"
            ),
            Error::MissingTensor { name } => write!(f, "checkpoint has no tensor '{name}'; re-pack the model"),
            Error::ShapeMismatch { name, expected, found } => write!(
                f,
                "tensor '{name}' has shape {found:?}, the model config implies {expected:?}; re-pack the model"
            ),
            Error::MissingMeta { key } => write!(f, "checkpoint metadata lacks '{key}'; re-pack the model"),
            Error::UnsupportedArchitecture { arch } => write!(
                f,
                "architecture '{arch}' is not supported (edge-run runs the Llama family)"
            ),
            Error::Misaligned { what, align } => {
                write!(f, "{what} is not {align}-byte aligned; the file is corrupt or was not written by edge-pack")
            }
            Error::InvalidArgument { what } => write!(f, "{what}"),
            Error::NonFinite { position } => write!(
                f,
                "the model produced non-finite logits (NaN or infinity) at position {position}: its weights are corrupt or overflow; `edge-run inspect --verify` names the damaged tensor, then re-pack or re-copy the file"
            ),
            Error::NotCompiled { feature, hint } => {
                write!(f, "this build has no '{feature}' support; {hint}")
            }
            Error::Device { message } => write!(f, "{message}"),
            Error::Io { path, message } => write!(f, "{path}: {message}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;

/// Shorthand used by the parsers.
pub(crate) fn corrupt(what: impl Into<alloc::string::String>) -> Error {
    Error::Corrupt { what: what.into() }
}
