//! Board configurations (`board-configs/*.toml`): what a device has (memory, cores, the kernel
//! table its CPU should get, power sensors) and the defaults a run on it starts from (threads,
//! the share of memory to budget). The files are embedded at compile time, so an installed
//! binary knows them without the folder; `--board FILE` reads any other file of the same shape.
//! The fields are described in `board-configs/README.md`.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use serde_json::json;

/// The embedded board files, by name (each file's `name` must be its file name).
const EMBEDDED: &[(&str, &str)] = &[
    ("rpi4-4gb", include_str!("../board-configs/rpi4-4gb.toml")),
    ("rpi4-8gb", include_str!("../board-configs/rpi4-8gb.toml")),
    ("rpi5-4gb", include_str!("../board-configs/rpi5-4gb.toml")),
    ("rpi5-8gb", include_str!("../board-configs/rpi5-8gb.toml")),
    ("rpi5-16gb", include_str!("../board-configs/rpi5-16gb.toml")),
    ("jetson-orin-nano", include_str!("../board-configs/jetson-orin-nano.toml")),
    ("jetson-orin-nx", include_str!("../board-configs/jetson-orin-nx.toml")),
];

/// The kernel tables' names (`edge_runtime::kernels::Kernels::name`) a board may expect.
pub const KERNEL_TABLES: &[&str] = &["scalar", "portable", "avx2", "avx512vnni", "neon", "neon+dotprod", "neon+i8mm"];

/// MemTotal is physical memory less what the firmware, kernel and carve-outs keep: a variant
/// is taken as present when MemTotal reaches this share of its `memory_bytes`.
const MEMTOTAL_SHARE: f64 = 0.85;

/// One board, as its TOML file describes it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Short name, the file's name without `.toml` (`rpi5-8gb`).
    pub name: String,
    /// For people: `Raspberry Pi 5, 8 GB`.
    #[serde(default)]
    pub description: String,
    /// Substrings of `/proc/device-tree/model` that identify the board family.
    pub model_match: Vec<String>,
    /// Installed memory (the variant), bytes.
    pub memory_bytes: u64,
    /// CPU cores.
    pub cores: usize,
    /// The big (fast) cores' indices, each below `cores`.
    pub big_cores: Vec<usize>,
    /// The kernel table the runtime should pick on this CPU (one of [`KERNEL_TABLES`]).
    pub kernel_table: String,
    /// Threads for matrix products when `-t` is not given.
    pub default_threads: usize,
    /// Share of MemAvailable a run may budget, in (0, 1].
    pub default_budget_fraction: f64,
    /// Bytes kept free besides the budget (allocator slack, page cache, other processes).
    pub margin_bytes: u64,
    /// Power sensors.
    pub power: Power,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Power {
    /// How power is measured on this board, or why it is not.
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub rails: Vec<Rail>,
    /// The rail `--power` holds (default: the total, see [`Power::total_rail`]).
    #[serde(default)]
    pub hold: Option<String>,
}

impl Power {
    /// The rail that stands for the whole board: the one named `total` (the Pi 5's sum of its
    /// PMIC rails), else the first (a Jetson's `VDD_IN`). None without rails.
    pub fn total_rail(&self) -> Option<&Rail> {
        self.rails.iter().find(|r| r.name == "total").or(self.rails.first())
    }
}

/// One measured rail: a sysfs file giving power (mW), a voltage (mV) and current (mA) pair, or
/// a command whose output holds the reading. Paths may hold a `*` (e.g. `hwmon/hwmon*`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rail {
    pub name: String,
    pub power_path: Option<String>,
    pub voltage_path: Option<String>,
    pub current_path: Option<String>,
    pub command: Option<String>,
    #[serde(default)]
    pub note: String,
}

impl Board {
    /// A known board by name, or the board file at a path.
    pub fn load(name_or_path: &str) -> Result<Board> {
        if let Some((_, text)) = EMBEDDED.iter().find(|(n, _)| *n == name_or_path) {
            return Board::parse(text, &format!("board-configs/{name_or_path}.toml (built in)"));
        }
        let path = Path::new(name_or_path);
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read board file {}: {e}", path.display()))?;
            return Board::parse(&text, &path.display().to_string());
        }
        let known: Vec<&str> = EMBEDDED.iter().map(|(n, _)| *n).collect();
        if name_or_path.ends_with(".toml") || name_or_path.contains('/') {
            bail!("board file {name_or_path} not found; give a board file or one of the known boards: {}", known.join(", "));
        }
        bail!("unknown board '{name_or_path}'; known boards: {} (or give a board file's path)", known.join(", "))
    }

    /// The embedded boards, in file order.
    pub fn known() -> Result<Vec<Board>> {
        EMBEDDED
            .iter()
            .map(|(name, text)| {
                let b = Board::parse(text, &format!("board-configs/{name}.toml (built in)"))?;
                if b.name != *name {
                    bail!("board-configs/{name}.toml: field `name`: \"{}\" is not the file's name", b.name);
                }
                Ok(b)
            })
            .collect()
    }

    /// The known board this machine is: the family by `/proc/device-tree/model`, the memory
    /// variant by MemTotal. None on x86, an unknown board, or unreadable files.
    pub fn detect() -> Option<Board> {
        let model = std::fs::read("/proc/device-tree/model").ok()?;
        let model = String::from_utf8_lossy(&model).trim_end_matches('\0').to_string();
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let mem_total = meminfo_kib(&meminfo, "MemTotal")? * 1024;
        detect_in(Board::known().ok()?, &model, mem_total)
    }

    /// Parse and validate a board file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Board> {
        let b: Board = toml::from_str(text).map_err(|e| {
            let field = e.span().and_then(|s| key_at(text, s.start));
            let at = match field {
                Some(k) => format!("field `{k}`: "),
                None => String::new(),
            };
            anyhow!("board file {file}: {at}{}", crate::report::one_line(e.message()))
        })?;
        b.validate().map_err(|e| anyhow!("board file {file}: {e}"))?;
        Ok(b)
    }

    fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            bail!("field `name` is empty");
        }
        if self.model_match.is_empty() || self.model_match.iter().any(|m| m.trim().is_empty()) {
            bail!("field `model_match`: give one or more non-empty substrings of /proc/device-tree/model");
        }
        if self.cores == 0 {
            bail!("field `cores` is 0; give the CPU's core count");
        }
        if let Some(c) = self.big_cores.iter().find(|&&c| c >= self.cores) {
            bail!("field `big_cores`: core {c} is not below `cores` = {}", self.cores);
        }
        if !KERNEL_TABLES.contains(&self.kernel_table.as_str()) {
            bail!("field `kernel_table`: \"{}\" is not a kernel table; choose one of {}", self.kernel_table, KERNEL_TABLES.join(", "));
        }
        if self.default_threads == 0 || self.default_threads > self.cores {
            bail!("field `default_threads` = {} is not in 1..={} (`cores`)", self.default_threads, self.cores);
        }
        let f = self.default_budget_fraction;
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            bail!("field `default_budget_fraction` = {f} is not in (0, 1]");
        }
        if self.memory_bytes <= self.margin_bytes {
            bail!("field `margin_bytes` = {} is not below `memory_bytes` = {}", self.margin_bytes, self.memory_bytes);
        }
        for r in &self.power.rails {
            let pair = (r.voltage_path.is_some(), r.current_path.is_some());
            let sources = usize::from(r.power_path.is_some()) + usize::from(pair != (false, false)) + usize::from(r.command.is_some());
            if sources != 1 || pair.0 != pair.1 {
                bail!(
                    "field `power.rails` (\"{}\"): give one source: `power_path`, `voltage_path` with `current_path`, or `command`",
                    r.name
                );
            }
        }
        if let Some(h) = &self.power.hold {
            if !self.power.rails.iter().any(|r| &r.name == h) {
                let names: Vec<&str> = self.power.rails.iter().map(|r| r.name.as_str()).collect();
                bail!("field `power.hold` = \"{h}\" names no rail; choose one of: {}", if names.is_empty() { "none (the board has no rails)".to_string() } else { names.join(", ") });
            }
        }
        Ok(())
    }

    /// The board as every command's JSON reports it.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "description": self.description,
            "model_match": self.model_match,
            "memory_bytes": self.memory_bytes,
            "cores": self.cores,
            "big_cores": self.big_cores,
            "kernel_table": self.kernel_table,
            "default_threads": self.default_threads,
            "default_budget_fraction": self.default_budget_fraction,
            "margin_bytes": self.margin_bytes,
            "power": {
                "note": self.power.note,
                "rails": self.power.rails.iter().map(|r| json!({
                    "name": r.name,
                    "power_path": r.power_path,
                    "voltage_path": r.voltage_path,
                    "current_path": r.current_path,
                    "command": r.command,
                    "note": r.note,
                })).collect::<Vec<_>>(),
            },
        })
    }

    /// One line for `edge-run boards`.
    pub fn summary(&self) -> String {
        let rails: Vec<&str> = self.power.rails.iter().map(|r| r.name.as_str()).collect();
        format!(
            "{:<17} {:<22} {:>9} {} cores ({} big), {:<12} {} threads, budget {:.0}% of MemAvailable - {}, power: {}",
            self.name,
            self.description,
            crate::stats::human_bytes(self.memory_bytes),
            self.cores,
            self.big_cores.len(),
            self.kernel_table,
            self.default_threads,
            self.default_budget_fraction * 100.0,
            crate::stats::human_bytes(self.margin_bytes),
            if rails.is_empty() { "none".to_string() } else { rails.join(", ") },
        )
    }

    /// For the startup line: `rpi5-8gb (Raspberry Pi 5, 8 GB): 4 threads, kernel table
    /// neon+dotprod`, with what the board expects when the CPU got another table.
    pub fn describe(&self, threads: usize, table: &str) -> String {
        let expect = if table == self.kernel_table { String::new() } else { format!(" (the board expects {})", self.kernel_table) };
        format!("{} ({}): {threads} threads, kernel table {table}{expect}", self.name, self.description)
    }
}

/// The board of `boards` whose `model_match` is in `model`, variant by memory: the largest
/// whose `memory_bytes` MemTotal reaches (see [`MEMTOTAL_SHARE`]), else the smallest.
pub fn detect_in(boards: Vec<Board>, model: &str, mem_total: u64) -> Option<Board> {
    let mut family: Vec<Board> = boards.into_iter().filter(|b| b.model_match.iter().any(|m| model.contains(m.as_str()))).collect();
    family.sort_by_key(|b| b.memory_bytes);
    let fits = |b: &Board| mem_total as f64 >= b.memory_bytes as f64 * MEMTOTAL_SHARE;
    let pick = family.iter().rposition(fits).unwrap_or(0);
    (!family.is_empty()).then(|| family.swap_remove(pick))
}

/// A `/proc/meminfo` field in KiB.
fn meminfo_kib(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
}

/// The key of the `key = value` line holding byte offset `at`, or of the table header there.
fn key_at(text: &str, at: usize) -> Option<String> {
    let start = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?.trim();
    let key = match line.split_once('=') {
        Some((k, _)) => k.trim(),
        None => line.trim_matches(|c| c == '[' || c == ']'),
    };
    (!key.is_empty()).then(|| key.trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_board_parses_and_validates() {
        let boards = Board::known().unwrap();
        assert_eq!(boards.len(), EMBEDDED.len());
        for b in &boards {
            assert!(b.big_cores.len() == b.cores, "{}: every core is big on these boards", b.name);
            assert!(b.memory_bytes >= 4 << 30, "{}", b.name);
        }
    }

    #[test]
    fn detection_picks_family_by_model_and_variant_by_memtotal() {
        let known = || Board::known().unwrap();
        let gib = |g: f64| (g * (1u64 << 30) as f64) as u64;
        let name = |m: &str, t: u64| detect_in(known(), m, t).map(|b| b.name);
        assert_eq!(name("Raspberry Pi 5 Model B Rev 1.0", gib(7.8)).as_deref(), Some("rpi5-8gb"));
        assert_eq!(name("Raspberry Pi 5 Model B Rev 1.0", gib(3.9)).as_deref(), Some("rpi5-4gb"));
        assert_eq!(name("Raspberry Pi 5 Model B Rev 1.1", gib(15.8)).as_deref(), Some("rpi5-16gb"));
        assert_eq!(name("Raspberry Pi 4 Model B Rev 1.4", gib(3.7)).as_deref(), Some("rpi4-4gb"));
        // A 2 GB Pi 4 has no file of its own: the smallest variant.
        assert_eq!(name("Raspberry Pi 4 Model B Rev 1.4", gib(1.8)).as_deref(), Some("rpi4-4gb"));
        assert_eq!(name("NVIDIA Jetson Orin Nano Developer Kit", gib(7.4)).as_deref(), Some("jetson-orin-nano"));
        assert_eq!(name("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", gib(15.3)).as_deref(), Some("jetson-orin-nx"));
        assert_eq!(name("QEMU Virtual Machine", gib(8.0)), None);
    }

    #[test]
    fn a_bad_field_is_named() {
        let good = EMBEDDED[3].1;
        let bad = good.replace("cores = 4\n", "cores = \"four\"\n");
        let e = Board::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("x.toml") && e.contains("`cores`"), "{e}");
        let bad = good.replace("kernel_table = \"neon+dotprod\"", "kernel_table = \"sve\"");
        let e = Board::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("`kernel_table`") && e.contains("neon+i8mm"), "{e}");
        assert_eq!(meminfo_kib("MemTotal:        8056208 kB\nMemFree: 1 kB\n", "MemTotal"), Some(8056208));
    }
}
