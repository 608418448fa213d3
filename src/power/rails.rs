//! A board file's `[power]` rails (`--board`): one rail is read as the board's total, the one
//! named, else [`crate::board::Power::total_rail`]. A rail is read from
//!
//! - `power_path`: a sysfs file in mW;
//! - `voltage_path` and `current_path`: sysfs files in mV and mA, multiplied;
//! - `command`: `vcgencmd ...` is read as the Pi 5's PMIC output (`rpi5.rs`: the rail of that
//!   name, or `total` for the sum of them); any other command runs under `sh -c` and prints one
//!   reading as a `file:` sensor's file holds it (`4.2 W`, `123.4 J`).
//!
//! Paths may hold `*` (the hwmon number changes between boots); they are matched once, when the
//! sensor is opened.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

use super::host::{glob, quoted, read_number, Host};
use super::rpi5::{self, Pick};
use super::{file, Reading, Sensor};
use crate::board::{Board, Rail};

enum Source {
    Milliwatts(PathBuf),
    MillivoltsMilliamps(PathBuf, PathBuf),
    Command(String),
}

pub struct BoardRail {
    label: String,
    source: Source,
}

/// The board's rail `rail` (None: its total rail).
pub fn open(host: &Host, board: &Board, rail: Option<&str>) -> Result<Box<dyn Sensor>> {
    let rails = &board.power.rails;
    if rails.is_empty() {
        let note = if board.power.note.is_empty() { String::new() } else { format!(" ({})", board.power.note) };
        bail!("board {} lists no power rails{note}", board.name);
    }
    let chosen: &Rail = match rail {
        Some(name) => rails.iter().find(|r| r.name == name).ok_or_else(|| {
            let names: Vec<&str> = rails.iter().map(|r| r.name.as_str()).collect();
            anyhow!("board {} has no rail {name:?} (rails: {})", board.name, names.join(", "))
        })?,
        None => board.power.total_rail().expect("rails is not empty"),
    };
    let label = format!("board {} {}", board.name, chosen.name);
    let at = |e: anyhow::Error| anyhow!("board {} rail {}: {e:#}", board.name, chosen.name);
    if let Some(command) = &chosen.command {
        let mut words = command.split_whitespace();
        if words.next() == Some("vcgencmd") {
            let Some(program) = &host.vcgencmd else { bail!("board {} rail {}: vcgencmd {}", board.name, chosen.name, Host::no_vcgencmd_reason()) };
            let pick = if chosen.name == "total" { Pick::Total } else { Pick::Rail(chosen.name.clone()) };
            let inner = rpi5::open_program(program, words.map(str::to_string).collect(), pick).map_err(at)?;
            return Ok(Box::new(Named { label: format!("{label}: {}", inner.name()), inner }));
        }
    }
    let source = match (&chosen.power_path, &chosen.voltage_path, &chosen.current_path, &chosen.command) {
        (Some(p), _, _, _) => Source::Milliwatts(resolve(host, p).map_err(at)?),
        (_, Some(v), Some(c), _) => Source::MillivoltsMilliamps(resolve(host, v).map_err(at)?, resolve(host, c).map_err(at)?),
        (_, _, _, Some(c)) => Source::Command(c.clone()),
        _ => bail!("board {} rail {}: no source (the board file was not validated)", board.name, chosen.name),
    };
    let mut sensor = BoardRail { label, source };
    sensor.read().map_err(at)?;
    Ok(Box::new(sensor))
}

/// The first file matching a rail's path (under the fixture root where one is set).
fn resolve(host: &Host, pattern: &str) -> Result<PathBuf> {
    let path = host.path(pattern);
    let found = if pattern.contains('*') { glob(&path).into_iter().next() } else { path.exists().then(|| path.clone()) };
    found.ok_or_else(|| anyhow!("no file matches {} (check the board file's paths against the board's sysfs)", path.display()))
}

impl Sensor for BoardRail {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn read(&mut self) -> Result<Reading> {
        match &self.source {
            Source::Milliwatts(p) => Ok(Reading::Watts(read_number(p, "a power in milliwatts")? * 1e-3)),
            Source::MillivoltsMilliamps(v, c) => {
                Ok(Reading::Watts(read_number(v, "a voltage in millivolts")? * read_number(c, "a current in milliamps")? * 1e-6))
            }
            Source::Command(c) => read_command(c),
        }
    }
}

/// A command that prints one reading (`4.2 W`, `123.4 J`).
fn read_command(command: &str) -> Result<Reading> {
    let text = rpi5::run("sh", &["-c".to_string(), command.to_string()])?;
    file::parse(&text).ok_or_else(|| anyhow!("`{command}` printed {}; expected watts (\"4.2 W\") or joules (\"123.4 J\")", quoted(&text)))
}

/// Another sensor under the board's name.
struct Named {
    label: String,
    inner: Box<dyn Sensor>,
}

impl Sensor for Named {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn read(&mut self) -> Result<Reading> {
        self.inner.read()
    }
}

#[cfg(test)]
mod tests {
    use super::super::host::write_tree;
    use super::*;

    fn watts(s: &mut dyn Sensor) -> f64 {
        match s.read().unwrap() {
            Reading::Watts(w) => w,
            Reading::Joules(_) => panic!("a rail reads power"),
        }
    }

    #[test]
    fn a_jetson_board_reads_vdd_in_through_its_glob() {
        let dir = tempfile::tempdir().unwrap();
        let d = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3";
        write_tree(dir.path(), &[(&format!("{d}/in1_input"), "5080\n"), (&format!("{d}/curr1_input"), "1500\n"), (&format!("{d}/in2_input"), "5080\n"), (&format!("{d}/curr2_input"), "500\n")]);
        let board = Board::load("jetson-orin-nano").unwrap();
        let host = Host::fixture(dir.path());
        let mut s = open(&host, &board, None).unwrap();
        assert_eq!(s.name(), "board jetson-orin-nano VDD_IN");
        assert!((watts(&mut *s) - 5.08 * 1.5).abs() < 1e-9);
        let mut s = open(&host, &board, Some("VDD_CPU_GPU_CV")).unwrap();
        assert!((watts(&mut *s) - 5.08 * 0.5).abs() < 1e-9);
        let e = open(&host, &board, Some("VDD_SOC")).err().unwrap().to_string();
        assert!(e.contains("rail VDD_SOC: no file matches") && e.contains("hwmon*/in3_input"), "{e}");
        let e = open(&host, &board, Some("VDD_GPU")).err().unwrap().to_string();
        assert!(e.contains("no rail \"VDD_GPU\" (rails: VDD_IN, VDD_CPU_GPU_CV, VDD_SOC)"), "{e}");
    }

    #[test]
    fn a_pi5_board_reads_its_total_through_vcgencmd_and_a_pi4_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let script = rpi5::tests::fake_vcgencmd(dir.path(), rpi5::tests::PI5_OUTPUT, 0);
        let host = Host { vcgencmd: Some(script.display().to_string()), ..Host::fixture(dir.path()) };
        let board = Board::load("rpi5-8gb").unwrap();
        let mut s = open(&host, &board, None).unwrap();
        assert_eq!(s.name(), "board rpi5-8gb total: RPi 5 PMIC (estimate: sum of rails)");
        assert!((2.5..3.5).contains(&watts(&mut *s)));
        let mut s = open(&host, &board, Some("VDD_CORE")).unwrap();
        assert!((watts(&mut *s) - 2.9448 * 0.723333).abs() < 1e-12);
        let e = open(&Host::fixture(dir.path()), &board, None).err().unwrap().to_string();
        assert!(e.contains("EDGE_RUN_VCGENCMD"), "{e}");
        let e = open(&host, &Board::load("rpi4-4gb").unwrap(), None).err().unwrap().to_string();
        assert!(e.contains("board rpi4-4gb lists no power rails (no power sensor on the board"), "{e}");
    }

    #[test]
    fn power_paths_and_other_commands() {
        let dir = tempfile::tempdir().unwrap();
        write_tree(dir.path(), &[("sys/devices/rail/power1_input", "3250\n")]);
        let mut board = Board::load("rpi4-4gb").unwrap();
        board.power.rails = vec![
            Rail { name: "SYS".into(), power_path: Some("/sys/devices/rail/power*_input".into()), voltage_path: None, current_path: None, command: None, note: String::new() },
            Rail { name: "USB".into(), power_path: None, voltage_path: None, current_path: None, command: Some("echo '2.5 W'".into()), note: String::new() },
            Rail { name: "BAD".into(), power_path: None, voltage_path: None, current_path: None, command: Some("echo lots".into()), note: String::new() },
        ];
        let host = Host::fixture(dir.path());
        assert!((watts(&mut *open(&host, &board, None).unwrap()) - 3.25).abs() < 1e-9);
        assert!((watts(&mut *open(&host, &board, Some("USB")).unwrap()) - 2.5).abs() < 1e-9);
        let e = open(&host, &board, Some("BAD")).err().unwrap().to_string();
        assert!(e.contains("`echo lots` printed \"lots\"; expected watts"), "{e}");
        std::fs::write(dir.path().join("sys/devices/rail/power1_input"), "3.2.5\n").unwrap();
        let e = open(&host, &board, None).err().unwrap().to_string();
        assert!(e.contains("power1_input: \"3.2.5\" is not a power in milliwatts"), "{e}");
    }
}
