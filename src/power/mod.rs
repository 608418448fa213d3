//! Power: sensor readers, one module each, and the meter that turns readings into joules over
//! a run (`--power`, joules per token). Readers are std-only and found automatically:
//!
//! | module | sensor | reads |
//! |---|---|---|
//! | `rails.rs` | a board file's `[power]` rails (`--board`) | sysfs mW, or mV x mA, or a command |
//! | `rapl.rs` | Intel/AMD RAPL (powercap) | energy counters, µJ, wraps unwrapped |
//! | `ina3221.rs` | Jetson INA3221 (hwmon; JetPack 4's iio) | mV x mA per rail; mW |
//! | `rpi5.rs` | Raspberry Pi 5 PMIC (`vcgencmd pmic_read_adc`) | V x A per rail, summed: an estimate |
//! | `nvml.rs` | discrete NVIDIA GPUs (NVML, loaded at run time) | mJ counter, else mW |
//! | `battery.rs` | a laptop battery while discharging | µW, or µA x µV |
//! | `file.rs` | `file:PATH`: a file holding watts or joules | `4.2 W`, `123.4 J` |
//!
//! `host.rs` holds what they share: the fixture root (`EDGE_RUN_SYSFS_ROOT`,
//! `EDGE_RUN_VCGENCMD`), number files with errors that name them, and `*` globs.

// The commands (generate, eval, bench) and the power controller are wired to this separately.
#![allow(dead_code)]

mod battery;
mod file;
#[cfg(test)]
mod fuzz;
mod host;
mod ina3221;
mod meter;
mod nvml;
mod rails;
mod rapl;
mod rpi5;

use anyhow::{bail, Result};

pub use host::Host;
#[allow(unused_imports)] // the commands' names for them, used once they report energy
pub use meter::{Meter, Summary, DEFAULT_PERIOD};

/// One reading of a sensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reading {
    /// A cumulative energy counter in joules, any wraparound already unwrapped.
    Joules(f64),
    /// Power now, in watts.
    Watts(f64),
}

pub trait Sensor: Send {
    /// What is measured, for the output: "RAPL package-0 (+dram)", "INA3221 VDD_IN",
    /// "RPi 5 PMIC (estimate: sum of rails)", "battery BAT0", "file /path".
    fn name(&self) -> String;
    fn read(&mut self) -> Result<Reading>;
}

/// The sensor names `--power-sensor` takes.
pub const SPECS: &str = "rapl, ina3221, rpi5, nvml, battery, board (or board:RAIL), file:PATH";

/// A power sensor. `spec`: None finds one (the board's rails if a board is given, then RAPL,
/// INA3221, the Pi 5's PMIC, NVML, a discharging battery); else one of [`SPECS`].
///
/// When none is found the error is one line naming everything looked for, why each failed, and
/// what to do instead.
pub fn open(spec: Option<&str>, board: Option<&crate::board::Board>) -> Result<Box<dyn Sensor>> {
    open_on(&Host::from_env(), spec, board)
}

type Probe = fn(&Host) -> Result<Box<dyn Sensor>>;

/// The readers auto-detection tries after the board's rails, in order, with their names.
const PROBES: &[(&str, Probe)] =
    &[("RAPL", rapl::open), ("INA3221", ina3221::open), ("RPi 5 PMIC", rpi5::open), ("NVML", nvml::open), ("battery", battery::open)];

/// [`open`] on a given host (the tests' fixture trees).
pub fn open_on(host: &Host, spec: Option<&str>, board: Option<&crate::board::Board>) -> Result<Box<dyn Sensor>> {
    let one = |e: anyhow::Error| crate::report::one_line(&format!("{e:#}"));
    let Some(spec) = spec.map(str::trim) else {
        let mut tried = Vec::new();
        match board {
            Some(b) => match rails::open(host, b, None) {
                Ok(s) => return Ok(s),
                Err(e) => tried.push(format!("board rails: {}", one(e))),
            },
            None => tried.push("board rails: no --board given".to_string()),
        }
        for (name, probe) in PROBES {
            match probe(host) {
                Ok(s) => return Ok(s),
                Err(e) => tried.push(format!("{name}: {}", one(e))),
            }
        }
        bail!(
            "no power sensor found ({}); measure at the supply with a USB power meter whose logger keeps a file current and give --power-sensor file:PATH (watts, \"4.2 W\", or joules, \"123.4 J\")",
            tried.join("; ")
        );
    };
    let named = |name: &str, r: Result<Box<dyn Sensor>>| r.map_err(|e| anyhow::anyhow!("power sensor {name}: {}", one(e)));
    if let Some(path) = spec.strip_prefix("file:") {
        return named("file", file::open(std::path::Path::new(path)));
    }
    if spec == "board" || spec.starts_with("board:") {
        let Some(b) = board else { bail!("power sensor {spec}: give --board NAME|FILE, whose [power] rails it reads") };
        let rail = spec.strip_prefix("board:").filter(|r| !r.is_empty());
        return named("board", rails::open(host, b, rail));
    }
    let probe = match spec {
        "rapl" => rapl::open as Probe,
        "ina3221" => ina3221::open,
        "rpi5" => rpi5::open,
        "nvml" => nvml::open,
        "battery" => battery::open,
        _ => bail!("power sensor {spec:?} is not known; give one of {SPECS}"),
    };
    named(spec, probe(host))
}

#[cfg(test)]
mod tests {
    use super::host::write_tree;
    use super::*;
    use crate::board::Board;

    #[test]
    fn an_empty_root_names_everything_looked_for_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_on(&Host::fixture(dir.path()), None, None).err().unwrap().to_string();
        assert!(!e.contains('\n'), "{e}");
        for what in ["board rails: no --board given", "RAPL: no ", "INA3221: no ina3221", "RPi 5 PMIC: vcgencmd not run", "NVML: not loaded", "battery: no battery", "--power-sensor file:PATH"] {
            assert!(e.contains(what), "{what:?} missing from: {e}");
        }
        // A board without rails says so, in the same line.
        let pi4 = Board::load("rpi4-8gb").unwrap();
        let e = open_on(&Host::fixture(dir.path()), None, Some(&pi4)).err().unwrap().to_string();
        assert!(e.contains("board rails: board rpi4-8gb lists no power rails (no power sensor on the board"), "{e}");
    }

    #[test]
    fn auto_detection_prefers_the_board_then_rapl_then_a_battery() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::fixture(dir.path());
        write_tree(dir.path(), &[("sys/class/power_supply/BAT0/status", "Discharging\n"), ("sys/class/power_supply/BAT0/power_now", "9000000\n")]);
        assert_eq!(open_on(&host, None, None).unwrap().name(), "battery BAT0");
        write_tree(
            dir.path(),
            &[
                ("sys/class/powercap/intel-rapl:0/name", "package-0\n"),
                ("sys/class/powercap/intel-rapl:0/energy_uj", "5\n"),
                ("sys/class/powercap/intel-rapl:0/max_energy_range_uj", "262143328850\n"),
            ],
        );
        assert_eq!(open_on(&host, None, None).unwrap().name(), "RAPL package-0");
        let d = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon0";
        write_tree(dir.path(), &[(&format!("{d}/in1_input"), "5000\n"), (&format!("{d}/curr1_input"), "1000\n")]);
        let nano = Board::load("jetson-orin-nano").unwrap();
        assert_eq!(open_on(&host, None, Some(&nano)).unwrap().name(), "board jetson-orin-nano VDD_IN");
        assert_eq!(open_on(&host, Some("battery"), Some(&nano)).unwrap().name(), "battery BAT0");
    }

    #[test]
    fn specs_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::fixture(dir.path());
        let e = open_on(&host, Some("tegrastats"), None).err().unwrap().to_string();
        assert!(e.contains("\"tegrastats\" is not known") && e.contains("file:PATH"), "{e}");
        let e = open_on(&host, Some("board"), None).err().unwrap().to_string();
        assert!(e.contains("give --board"), "{e}");
        let e = open_on(&host, Some("rapl"), None).err().unwrap().to_string();
        assert!(e.starts_with("power sensor rapl: no "), "{e}");
        let p = dir.path().join("w");
        std::fs::write(&p, "4.2 W").unwrap();
        let mut s = open_on(&host, Some(&format!("file:{}", p.display())), None).unwrap();
        assert_eq!(s.read().unwrap(), Reading::Watts(4.2));
    }

    /// What this machine has, through the real /sys and /proc; run with `--ignored` on a
    /// machine with a sensor (the development VM has none: no powercap, hwmon, battery or GPU).
    #[test]
    #[ignore = "needs a power sensor on this machine (the development VM has none)"]
    fn this_machine_has_a_sensor() {
        let mut s = open(None, None).unwrap_or_else(|e| panic!("NO POWER SENSOR HERE: {e:#}"));
        let r = s.read().unwrap();
        eprintln!("{}: {r:?}", s.name());
    }
}
