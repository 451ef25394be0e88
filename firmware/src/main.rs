//! The `flowwarden` binary: parses the command line and runs the chosen
//! command from the library. Logs go to stderr (RUST_LOG, default info).
//! Run as PID 1 (the firmware image's /init) it becomes the init system instead.
//! Logs are coloured only on a terminal, and never when NO_COLOR is set.

use clap::Parser;

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    // Colour only for a person at a terminal; never in log files or pipes, never with NO_COLOR.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
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
        // The reader of our output went away (`| head`): stop quietly, as Unix tools do.
        Err(e) if flowwarden::cli::is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        // The command already printed its ending (`update`: refused 1, failed 2).
        Err(e) if e.downcast_ref::<flowwarden::cli::Quiet>().is_some() => {
            std::process::ExitCode::from(e.downcast_ref::<flowwarden::cli::Quiet>().map(|q| q.0).unwrap_or(1))
        }
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
