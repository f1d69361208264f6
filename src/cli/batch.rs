//! STUB: `inr batch` (dataset compression). Replaced by the batch engineer's module.

/// Compress many images (not implemented yet).
#[derive(clap::Args, Debug)]
pub struct BatchArgs {}

/// Run `inr batch`.
///
/// # Errors
/// Always: the subcommand is not implemented yet.
pub fn run(args: BatchArgs, quiet: bool, json: bool) -> anyhow::Result<()> {
    let _ = (args, quiet, json);
    anyhow::bail!("`inr batch` is not implemented yet")
}
