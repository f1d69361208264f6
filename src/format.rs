//! STUB — to be replaced by the real container (see codec-spec.md).

/// Decoder limits (STUB).
#[derive(Debug, Clone, Default)]
pub struct Limits {}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("not implemented")]
    Todo,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FileInfo {}

pub fn inspect(_bytes: &[u8]) -> Result<FileInfo, FormatError> {
    Err(FormatError::Todo)
}
