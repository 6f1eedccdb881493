//! The `gpuprep` command: parse flags, run, print the error chain and exit 2 on failure.

use clap::Parser;

fn main() {
    let cli = gpuprep::cli::Cli::parse();
    if let Err(e) = gpuprep::app::run_command(cli.command) {
        eprintln!("gpuprep: {e:#}");
        std::process::exit(2);
    }
}
