//! Fuzz targets of the CLI's readers of untrusted text: board configs and plan files (sensor
//! readings are in `power/fuzz.rs`, beside the private parsers). They live in the binary crate
//! because these readers do; the harness and the library crates' targets are in `fuzz/`.
//! Run: `cargo test -p edge-run --bin edge-run fuzz_` (counts as in `fuzz/tests/short.rs`).

use std::sync::OnceLock;

use edge_fuzz::check;
use edge_runtime::arch::{self, Arch};
use edge_runtime::{Checkpoint, Config};

use crate::board::Board;

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// A board file through `Board::parse`, then everything a parsed board is shown by.
fn board(data: &[u8]) -> String {
    match Board::parse(&text(data), "fuzz.toml") {
        Ok(b) => {
            let _ = b.to_json().to_string();
            let _ = b.summary();
            let _ = b.power.total_rail().map(|r| r.name.clone());
            "ok".into()
        }
        Err(e) => format!("{e:#}"),
    }
}

fn board_seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("board-configs");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("board-configs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| std::fs::read(p).expect("board file"))
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no board-configs/*.toml to seed the board fuzzer");
    seeds
}

/// stories260K's architecture and config (a plan file is checked against a model's matrices).
fn model() -> &'static (&'static Arch, Config) {
    static M: OnceLock<(&'static Arch, Config)> = OnceLock::new();
    M.get_or_init(|| {
        let seed = &edge_fuzz::targets::edge_seeds()[0];
        let ck = Checkpoint::parse(seed).expect("the packed seed parses");
        (arch::of_checkpoint(&ck).expect("arch"), Config::from_checkpoint(&ck).expect("config"))
    })
}

/// A plan file through `views::read_plan_file` (it reads a path: the input is written to one).
fn plan(data: &[u8]) -> String {
    let (arch, config) = model();
    let p = edge_fuzz::write_scratch("plan.toml", data);
    match crate::views::read_plan_file(&p, arch, config) {
        Ok(plan) => format!("ok {}", plan.overrides.len()),
        Err(e) => format!("{e:#}").replace(&p.display().to_string(), "PLAN"),
    }
}

fn plan_seeds() -> Vec<Vec<u8>> {
    [
        "# a per-layer plan\ndefault = 4\n\n[views]\n\"blk.0\" = 8\n\"ffn_down\" = 3\n\"token_embd\" = 8\n",
        "[views]\n\"blk.0.ffn_up.weight\" = 2\n\"blk.1.attn_q\" = 6\n",
        "default = 5\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

#[test]
fn fuzz_board() {
    check("board", board_seeds(), 40000, board);
}

#[test]
fn fuzz_plan() {
    check("plan", plan_seeds(), 3000, plan);
}
