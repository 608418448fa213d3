//! `edge-run`: the device CLI. Generation (default), `eval` (perplexity, KL divergence), `bench`
//! (speed) and `inspect` (checkpoint contents and checksums).
//!
//! Every failure ends as one line on stderr, `edge-run: error: <what is wrong and what to do>`,
//! with exit code 1: argument errors, I/O, corrupt checkpoints, and (as a last resort) panics.

// Commands: one module each, none importing another.
mod bench;
mod eval;
mod generate;
mod inspect;
mod sweep;

// What the commands share.
mod cli;
mod loader;
mod perplexity;
mod plot;
mod profile;
mod progress;
mod report;
mod session;
mod stats;
mod tokenizer;
mod views;

use clap::error::ErrorKind;
use clap::Parser;

fn fail(msg: &str) -> ! {
    eprintln!("edge-run: error: {}", report::one_line(msg));
    std::process::exit(1);
}

/// The help of the subcommand the arguments name (`edge-run eval --help`), else `edge-run --help`.
fn help_command() -> String {
    let sub = std::env::args().nth(1).filter(|a| ["generate", "gen", "eval", "bench", "inspect"].contains(&a.as_str()));
    match sub {
        Some(s) => format!("edge-run {s} --help"),
        None => "edge-run --help".into(),
    }
}

fn main() {
    edge_pack::install_one_line_panic_hook("edge-run");

    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = e.print();
                std::process::exit(0);
            }
            _ => {
                // clap's message: "error: <what>\n  <details>\n\n  tip: ...\n\nUsage: ...\n\n
                // For more information, try '--help'.": keep what comes before the usage, on one
                // line, and give the help hint once, our own.
                let rendered = e.render().to_string();
                let what = rendered.split("\nUsage:").next().unwrap_or_default();
                let what: Vec<&str> = what.lines().filter(|l| !l.trim_start().starts_with("For more information")).collect();
                let what = report::one_line(&what.join("\n"));
                let first = what.trim_start_matches("error: ");
                let first = if first.is_empty() { "invalid arguments" } else { first };
                fail(&format!("{first}; see `{}`", help_command()));
            }
        },
    };

    let model_args = match &cli.command {
        None => Some(&cli.generate.model),
        Some(cli::Command::Generate(g)) => Some(&g.model),
        Some(cli::Command::Eval(e)) => Some(&e.model),
        // bench sets the thread count of each measurement itself.
        Some(cli::Command::Bench(_) | cli::Command::Inspect(_)) => None,
    };
    if let Some(n) = model_args.and_then(|m| m.threads) {
        edge_runtime::kernels::set_threads(n);
    }

    let result = match &cli.command {
        None => generate::run(&cli.generate),
        Some(cli::Command::Generate(g)) => generate::run(g),
        Some(cli::Command::Eval(e)) if e.sweep => sweep::run(e),
        Some(cli::Command::Eval(e)) => eval::run(e),
        Some(cli::Command::Bench(b)) => bench::run(b),
        Some(cli::Command::Inspect(i)) => inspect::run(i),
    };
    if let Err(e) = result {
        fail(&format!("{e:#}"));
    }
}
