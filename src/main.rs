//! gatehouse's entry point: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use gatehouse::config::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A bad value of a known flag is bad configuration (64), with clap's first line,
        // which names the flag; other usage errors keep clap's own exit code (2).
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            ) =>
        {
            let rendered = e.render().to_string();
            eprintln!(
                "gatehouse: {}",
                rendered
                    .lines()
                    .next()
                    .unwrap_or("invalid value")
                    .trim_start_matches("error: ")
            );
            return ExitCode::from(64);
        }
        Err(e) => e.exit(),
    };
    if let Err(e) = gatehouse::telemetry::init(&cli.log, gatehouse::log_layer()) {
        eprintln!("gatehouse: {e}");
        return ExitCode::from(64);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let gatehouse::config::Command::Serve(args) = &cli.command {
        if args.workers > 0 {
            runtime.worker_threads(args.workers);
        }
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatehouse: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(gatehouse::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
