//! `edge-run boards`: the known boards, one line each (or JSON), and the one this machine is.

use std::io::Write;

use anyhow::Result;
use serde_json::json;

use crate::board::Board;
use crate::cli::BoardsArgs;

pub fn run(args: &BoardsArgs) -> Result<()> {
    let boards = Board::known()?;
    let detected = Board::detect().map(|b| b.name);
    // Errors writing (a closed pipe: `edge-run boards | head`) end the listing quietly.
    let mut out = std::io::stdout().lock();
    if args.json {
        let obj = json!({
            "boards": boards.iter().map(Board::to_json).collect::<Vec<_>>(),
            "detected": detected,
        });
        let _ = writeln!(out, "{obj}");
        return Ok(());
    }
    for b in &boards {
        let mark = if detected.as_deref() == Some(b.name.as_str()) { "*" } else { " " };
        let _ = writeln!(out, "{mark} {}", b.summary());
    }
    let _ = match detected {
        Some(d) => writeln!(out, "(* this machine: {d})"),
        None => writeln!(out, "(this machine is none of these: no /proc/device-tree/model naming one)"),
    };
    Ok(())
}
