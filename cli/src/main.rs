//! `imagesync`: copy, resolve and delete container images between registries.
//!
//! Modules: [`args`] (the command line), [`commands`] (the engine set-up and one module
//! per command), [`progress`] (the copy's progress display), [`output`] (stderr lines and
//! logging), [`exit`] (exit codes).

use std::process::ExitCode;

mod args;
mod commands;
mod exit;
mod output;
mod progress;

use args::Args;

fn main() -> ExitCode {
    let args = match Args::parse_checked() {
        Ok(a) => a,
        Err(e) if e.use_stderr() && output::json_requested() => {
            output::clap_error_json(&e);
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => e.exit(),
    };
    output::init_logging(args.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(commands::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.downcast_ref::<exit::Warned>().is_some() => {
            ExitCode::from(exit::code(&err))
        }
        Err(err) => {
            output::error(&output::chain(&err));
            ExitCode::from(exit::code(&err))
        }
    }
}
