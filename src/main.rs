//! The `berth` command: parses the command line, builds the configuration, runs. The only place errors are printed
//! and turned into exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use berth::config::{Config, ServeArgs};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "An in-cluster OCI registry that guards a Kubernetes cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry (and, later, the admission webhooks) on one listener.
    Serve(ServeArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = match Config::from_args(&args) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("berth: {e}");
                    return ExitCode::from(2);
                }
            };
            match actix_web::rt::System::new().block_on(berth::server::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
