//! `edge-run`: the device CLI. Generation (default), `eval` (perplexity, KL divergence), `bench`
//! (speed) and `inspect` (checkpoint contents and checksums).
//!
//! Every failure ends as one line on stderr, `edge-run: error: <what is wrong and what to do>`,
//! with exit code 1: argument errors, I/O, corrupt checkpoints, and (as a last resort) panics.

// Commands: one module each, none importing another.
mod bench;
mod boards;
mod budget;
mod eval;
mod generate;
mod inspect;
mod inspect_gguf;
mod sweep;

// What the commands share.
mod affinity;
mod board;
mod cli;
mod controller;
mod energy;
mod energy_plot;
#[cfg(test)]
mod fuzz_targets;
mod loader;
mod logits_out;
mod memory;
mod perplexity;
mod plot;
mod power;
mod profile;
mod progress;
mod report;
mod session;
#[cfg(unix)]
mod sigbus;
mod stats;
mod tokenizer;
mod verify;
mod views;

use clap::error::ErrorKind;
use clap::Parser;

fn fail(msg: &str) -> ! {
    eprintln!("edge-run: error: {}", report::one_line(msg));
    std::process::exit(1);
}

/// The help of the subcommand the arguments name (`edge-run eval --help`), else `edge-run --help`.
fn help_command() -> String {
    let sub = std::env::args().nth(1).filter(|a| ["generate", "gen", "eval", "bench", "inspect", "boards"].contains(&a.as_str()));
    match sub {
        Some(s) => format!("edge-run {s} --help"),
        None => "edge-run --help".into(),
    }
}

fn main() {
    edge_pack::install_one_line_panic_hook("edge-run");
    memory::return_freed_copies();
    #[cfg(unix)]
    sigbus::install();

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

    let (board_arg, threads_arg) = match &cli.command {
        None => (&cli.generate.model.board, cli.generate.model.threads),
        Some(cli::Command::Generate(g)) => (&g.model.board, g.model.threads),
        Some(cli::Command::Eval(e)) => (&e.model.board, e.model.threads),
        // bench sets the thread count of each measurement itself (-t, else the default set here).
        Some(cli::Command::Bench(b)) => (&b.board, None),
        Some(cli::Command::Inspect(_) | cli::Command::Boards(_)) => (&None, None),
    };
    let board = match board_arg.as_deref().map(board::Board::load).transpose() {
        Ok(b) => b,
        Err(e) => fail(&format!("--board: {e:#}")),
    };
    if let Some(n) = threads_arg.or(board.as_ref().map(|b| b.default_threads)) {
        edge_runtime::kernels::set_threads(n);
    }

    let result = match &cli.command {
        None => generate::run(&cli.generate, board.as_ref()),
        Some(cli::Command::Generate(g)) => generate::run(g, board.as_ref()),
        Some(cli::Command::Eval(e)) if e.sweep => sweep::run(e),
        Some(cli::Command::Eval(e)) => eval::run(e),
        Some(cli::Command::Bench(b)) => bench::run(b),
        Some(cli::Command::Inspect(i)) => inspect::run(i),
        Some(cli::Command::Boards(b)) => boards::run(b),
    };
    if let Err(e) = result {
        fail(&format!("{e:#}"));
    }
}
