use std::process::ExitCode;

use clap::Parser;
use extctl::cli::{Cli, Command};
use extctl::{crd, kubernetes, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Sign(args) => match extctl::sign::run(&args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("extctl sign: {error:#}");
                ExitCode::from(2)
            }
        },

        Command::Run(args) => {
            telemetry::init(cli.log_format);
            // TLS to the API server uses rustls with ring, chosen here rather than by whichever
            // dependency happens to ask first.
            let _ = rustls::crypto::ring::default_provider().install_default();
            match kubernetes::run(args.settings()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
