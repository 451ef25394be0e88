//! The `flowwarden` binary: parses the command line and runs the chosen
//! command from the library. Logs go to stderr (RUST_LOG, default info).
//! Run as PID 1 (the firmware image's /init) it becomes the init system instead.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if flowwarden::init::is_pid1() {
        // Started by the kernel as /init: bring the box up and supervise (never returns).
        flowwarden::init::main();
    }
    let cli = flowwarden::cli::Cli::parse();
    match flowwarden::cli::main_with(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Typed errors already name their cause in their message; print each
            // cause of the chain once.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}
