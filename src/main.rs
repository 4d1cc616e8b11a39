use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use extctl::bench;
use extctl::checker::{send, sign};
use extctl::cli::{Cli, Command};
use extctl::{kubernetes, telemetry};
use extctl_core::crd;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // TLS (to the API server, to checkers, to GitLab) uses rustls with ring, chosen here rather
    // than by whichever dependency happens to ask first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Crd => {
            print!("{}", crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Sign(args) => match sign::run(&args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("extctl sign: {error:#}");
                ExitCode::from(2)
            }
        },
        Command::Send(args) => match send::run(&args).await {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("extctl send: {error}");
                match error {
                    send::SendError::Setup(_) => ExitCode::from(2),
                    _ => ExitCode::FAILURE,
                }
            }
        },
        Command::Bench(args) => match bench::run(&args).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("extctl bench: {error:#}");
                ExitCode::from(2)
            }
        },
        Command::Dev(args) => {
            telemetry::init(cli.log_format);
            match extctl::dev::run(args.settings()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("extctl dev: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ping(args) => match kubernetes::recheck::request(&args.request()).await {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("extctl ping: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            telemetry::init(cli.log_format);
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
