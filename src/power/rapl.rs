//! RAPL (Intel, and AMD since Zen) through Linux powercap: each zone
//! `/sys/class/powercap/intel-rapl:N[:M]` has a `name` (`package-0`, `core`, `uncore`, `dram`,
//! `psys`) and `energy_uj`, a cumulative counter in microjoules that wraps to 0 past
//! `max_energy_range_uj`.
//!
//! The total is every package zone plus every dram zone: DRAM is its own domain, outside the
//! package's. `core` and `uncore` are parts of the package and are not added. `psys` (the
//! platform, on laptops) contains the package, so adding it would count the package twice; it is
//! the total only where there is no package zone.
//!
//! A counter wraps after `max_energy_range_uj` (about 262 kJ: 40 minutes at 100 W), so sampling
//! every few seconds or faster sees at most one wrap between reads.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use super::host::{glob, io_reason, read_number, read_text, Host};
use super::{Reading, Sensor};

const POWERCAP: &str = "/sys/class/powercap";

struct Zone {
    energy_uj: PathBuf,
    /// The counter's range: it goes from `max_uj` back to 0.
    max_uj: u64,
    last_uj: u64,
}

pub struct Rapl {
    label: String,
    zones: Vec<Zone>,
    /// Microjoules over every zone since the sensor was opened, wraps unwrapped.
    total_uj: u128,
}

pub fn open(host: &Host) -> Result<Box<dyn Sensor>> {
    let dir = host.path(POWERCAP);
    if !dir.is_dir() {
        bail!("no {} (no powercap driver: not an Intel or AMD CPU, or a virtual machine that hides RAPL)", dir.display());
    }
    let mut named = Vec::new();
    for zone in glob(&dir.join("intel-rapl:*")) {
        let name = read_text(&zone.join("name"))?;
        named.push((name, zone));
    }
    if named.is_empty() {
        bail!("no intel-rapl:* zone in {} (the intel_rapl_msr module is not loaded, or the CPU has no RAPL)", dir.display());
    }
    let is_package = |n: &str| n.starts_with("package");
    let packages: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).filter(|n| is_package(n)).collect();
    let chosen: Vec<&(String, PathBuf)> = if packages.is_empty() {
        named.iter().filter(|(n, _)| n == "psys").collect()
    } else {
        named.iter().filter(|(n, _)| is_package(n) || n == "dram").collect()
    };
    if chosen.is_empty() {
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        bail!("no package or psys zone in {} (zones: {})", dir.display(), names.join(", "));
    }
    let label = if packages.is_empty() {
        "RAPL psys".to_string()
    } else {
        let dram = if chosen.iter().any(|(n, _)| n == "dram") { " (+dram)" } else { "" };
        format!("RAPL {}{dram}", packages.join("+"))
    };
    let mut zones = Vec::new();
    for (_, dir) in chosen {
        let max = read_number(&dir.join("max_energy_range_uj"), "an integer range in microjoules")?;
        if max < 1.0 {
            bail!("{}: a range of 0 microjoules cannot be unwrapped", dir.join("max_energy_range_uj").display());
        }
        let energy_uj = dir.join("energy_uj");
        let last_uj = read_counter(&energy_uj)?;
        zones.push(Zone { energy_uj, max_uj: max as u64, last_uj });
    }
    Ok(Box::new(Rapl { label, zones, total_uj: 0 }))
}

/// One `energy_uj`.
fn read_counter(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).map_err(|e| read_error(path, &e))?;
    text.trim()
        .parse::<u64>()
        .map_err(|_| anyhow!("{}: {} is not an integer in microjoules", path.display(), super::host::quoted(&text)))
}

/// Why a counter could not be read; permission says why (root-only since Linux 5.10, after
/// CVE-2020-8694 showed the counters leak what a CPU computes).
fn read_error(path: &Path, e: &std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        anyhow!(
            "cannot read {}: permission denied (energy_uj is root-only since Linux 5.10: run as root, or `sudo chmod a+r` the zones' energy_uj files)",
            path.display()
        )
    } else {
        anyhow!("cannot read {}: {}", path.display(), io_reason(e))
    }
}

/// Microjoules from `last` to `now` on a counter that goes from `max` back to 0.
fn delta_uj(last: u64, now: u64, max: u64) -> u64 {
    if now >= last {
        now - last
    } else {
        max.saturating_sub(last) + now
    }
}

impl Sensor for Rapl {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn read(&mut self) -> Result<Reading> {
        for z in &mut self.zones {
            let now = read_counter(&z.energy_uj)?;
            self.total_uj += u128::from(delta_uj(z.last_uj, now, z.max_uj));
            z.last_uj = now;
        }
        Ok(Reading::Joules(self.total_uj as f64 * 1e-6))
    }
}

#[cfg(test)]
mod tests {
    use super::super::host::write_tree;
    use super::*;

    const MAX: &str = "262143328850";

    /// A zone as the kernel lays it out (`name`, `energy_uj`, `max_energy_range_uj`).
    fn zone(root: &Path, zone: &str, name: &str, energy: &str) {
        let d = format!("sys/class/powercap/{zone}");
        write_tree(root, &[(&format!("{d}/name"), &format!("{name}\n")), (&format!("{d}/energy_uj"), &format!("{energy}\n")), (&format!("{d}/max_energy_range_uj"), &format!("{MAX}\n"))]);
    }

    fn set(root: &Path, zone: &str, energy: &str) {
        std::fs::write(root.join(format!("sys/class/powercap/{zone}/energy_uj")), format!("{energy}\n")).unwrap();
    }

    fn joules(s: &mut dyn Sensor) -> f64 {
        match s.read().unwrap() {
            Reading::Joules(j) => j,
            Reading::Watts(_) => panic!("RAPL reads energy"),
        }
    }

    #[test]
    fn package_and_dram_are_summed_and_core_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        zone(root, "intel-rapl:0", "package-0", "1000000");
        zone(root, "intel-rapl:0:0", "core", "500000");
        zone(root, "intel-rapl:0:1", "dram", "2000000");
        // The control type's own folder has no counter and no colon: not a zone.
        write_tree(root, &[("sys/class/powercap/intel-rapl/enabled", "1")]);
        let mut s = open(&Host::fixture(root)).unwrap();
        assert_eq!(s.name(), "RAPL package-0 (+dram)");
        assert_eq!(joules(&mut *s), 0.0);
        set(root, "intel-rapl:0", "3500000");
        set(root, "intel-rapl:0:0", "9000000");
        set(root, "intel-rapl:0:1", "2250000");
        assert!((joules(&mut *s) - 2.75).abs() < 1e-9);
    }

    #[test]
    fn a_wrapped_counter_is_unwrapped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        zone(root, "intel-rapl:0", "package-0", "262143000000");
        let mut s = open(&Host::fixture(root)).unwrap();
        assert_eq!(s.name(), "RAPL package-0");
        // 328850 uJ to the top of the range, then 671150 past 0: 1 J.
        set(root, "intel-rapl:0", "671150");
        assert!((joules(&mut *s) - 1.0).abs() < 1e-9);
        set(root, "intel-rapl:0", "2671150");
        assert!((joules(&mut *s) - 3.0).abs() < 1e-9);
        assert_eq!(delta_uj(10, 5, 20), 15);
    }

    #[test]
    fn psys_is_the_total_only_without_a_package() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        zone(root, "intel-rapl:0", "package-0", "0");
        zone(root, "intel-rapl:1", "psys", "0");
        assert_eq!(open(&Host::fixture(root)).unwrap().name(), "RAPL package-0");
        let dir = tempfile::tempdir().unwrap();
        zone(dir.path(), "intel-rapl:1", "psys", "0");
        assert_eq!(open(&Host::fixture(dir.path())).unwrap().name(), "RAPL psys");
        let dir = tempfile::tempdir().unwrap();
        zone(dir.path(), "intel-rapl:0:0", "core", "0");
        let e = open(&Host::fixture(dir.path())).err().unwrap().to_string();
        assert!(e.contains("no package or psys zone") && e.contains("zones: core"), "{e}");
    }

    #[test]
    fn missing_powercap_and_garbage_counters_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(&Host::fixture(dir.path())).err().unwrap().to_string();
        assert!(e.contains("sys/class/powercap (no powercap driver"), "{e}");
        write_tree(dir.path(), &[("sys/class/powercap/intel-rapl/enabled", "1")]);
        let e = open(&Host::fixture(dir.path())).err().unwrap().to_string();
        assert!(e.contains("no intel-rapl:* zone"), "{e}");
        zone(dir.path(), "intel-rapl:0", "package-0", "12.5e3");
        let e = open(&Host::fixture(dir.path())).err().unwrap().to_string();
        assert!(e.contains("intel-rapl:0/energy_uj: \"12.5e3\" is not an integer in microjoules"), "{e}");
        set(dir.path(), "intel-rapl:0", "100");
        let mut s = open(&Host::fixture(dir.path())).unwrap();
        set(dir.path(), "intel-rapl:0", "");
        let e = s.read().unwrap_err().to_string();
        assert!(e.contains("energy_uj: \"\" is not an integer"), "{e}");
    }

    #[test]
    fn an_unreadable_counter_says_it_is_root_only() {
        // Root reads a mode-000 file, so the message is checked on the error itself.
        let f = Path::new("/sys/class/powercap/intel-rapl:0/energy_uj");
        let e = read_error(f, &std::io::Error::from(std::io::ErrorKind::PermissionDenied)).to_string();
        assert!(e.contains("intel-rapl:0/energy_uj: permission denied") && e.contains("root-only since Linux 5.10"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        zone(dir.path(), "intel-rapl:0", "package-0", "0");
        let f = dir.path().join("sys/class/powercap/intel-rapl:0/energy_uj");
        std::fs::remove_file(&f).unwrap();
        let e = open(&Host::fixture(dir.path())).err().unwrap().to_string();
        assert!(e.contains("cannot read") && e.ends_with("energy_uj: no such file"), "{e}");
    }

    /// The machine's own RAPL, where it has one; run with `--ignored` on such a machine.
    #[test]
    #[ignore = "needs a readable /sys/class/powercap/intel-rapl:0/energy_uj (absent on the development VM)"]
    fn real_rapl_reads() {
        let f = Path::new("/sys/class/powercap/intel-rapl:0/energy_uj");
        assert!(f.exists(), "NO RAPL ON THIS MACHINE: {} does not exist", f.display());
        let mut s = open(&Host::default()).unwrap_or_else(|e| panic!("RAPL present but not usable: {e:#}"));
        let a = joules(&mut *s);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let b = joules(&mut *s);
        eprintln!("{}: {:.3} J in 0.2 s", s.name(), b - a);
        assert!(b > a, "{}: the counter did not move in 0.2 s", s.name());
    }
}
