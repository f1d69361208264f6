//! STUB: `inr rd` (rate–distortion sweep). Replaced by the rd engineer's module.

/// Rate–distortion sweep (not implemented yet).
#[derive(clap::Args, Debug)]
pub struct RdArgs {}

/// Run `inr rd`.
///
/// # Errors
/// Always: the subcommand is not implemented yet.
pub fn run(args: RdArgs, quiet: bool, json: bool) -> anyhow::Result<()> {
    let _ = (args, quiet, json);
    anyhow::bail!("`inr rd` is not implemented yet")
}
