//! `keyledger`: the command line. Every operation works offline on a data
//! directory; `serve` runs the HTTP service on the same runtime.

mod cli;
mod demo;
mod error;
mod evidence_cli;
mod login;
mod output;
mod policy_args;
mod remote;
mod scan;
mod serve;
mod webhooks_cli;

use std::process::ExitCode;

use clap::{FromArgMatches, parser::ValueSource};

fn main() -> ExitCode {
    quiet_caught_panics();
    let matches = <cli::Args as clap::CommandFactory>::command().get_matches();
    let mut args = match cli::Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    args.data_given = matches!(
        matches.value_source("data"),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    );
    args.key_in_argument = matches.value_source("key") == Some(ValueSource::CommandLine);
    let json = args.json;
    tracing_subscriber::fmt()
        // Anything shaped like a key is masked in every log line, whoever
        // logs it (keyledger_server::redact).
        .with_writer(|| keyledger_server::redact::MaskingWriter(std::io::stderr()))
        // Colours on a terminal only: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYLEDGER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        // `| head` closed standard output: the reader has what it wanted.
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                eprintln!("{}", e.json());
            } else {
                eprintln!("error: {}", e.text());
            }
            ExitCode::from(2)
        }
    }
}

/// A panic the store catches and returns as an error (redb meeting a
/// damaged `ledger.redb`, `keyledger_store::guard`) prints nothing: the
/// error it becomes is reported instead. Every other panic goes to the
/// default hook, as loud as before.
fn quiet_caught_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !keyledger_store::guard::caught(info) {
            default(info);
        }
    }));
}
