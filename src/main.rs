// TEMPORARY wiring so the `rd` and `batch` commands can be built and run on the `rd` branch.
// Lead: drop this commit; declare `pub mod rd; pub mod batch;` in src/cli/mod.rs instead.
mod cli {
    pub mod batch;
    pub mod rd;
}

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "inr")]
struct Cli {
    #[arg(long, global = true)]
    quiet: bool,
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Rd(cli::rd::RdArgs),
    Batch(cli::batch::BatchArgs),
}

fn main() {
    let c = Cli::parse();
    let r = match c.cmd {
        Cmd::Rd(a) => cli::rd::run(a, c.quiet, c.json),
        Cmd::Batch(a) => cli::batch::run(a, c.quiet, c.json),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
