//! The `inr` command-line tool: parses arguments, calls the `inr` library, prints results and
//! sets the exit code (0 success, 1 error, 2 usage error). All logic lives in the library.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
