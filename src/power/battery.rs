//! A laptop's battery while it powers the machine: `/sys/class/power_supply/BAT*/` gives
//! `power_now` (µW), or on drivers without it `current_now` (µA) and `voltage_now` (µV).
//!
//! Only a discharging battery measures the machine's draw: on AC the charger feeds the machine
//! and the battery's reading is its charge current (or 0 when full). So a battery is a sensor
//! only while its `status` is `Discharging`, checked at every read; a run that is plugged in
//! midway gets read errors that say so, not wrong joules.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::host::{glob, read_number, read_text, Host};
use super::{Reading, Sensor};

pub struct Battery {
    /// The `BAT*` folders that were discharging when opened.
    batteries: Vec<PathBuf>,
}

pub fn open(host: &Host) -> Result<Box<dyn Sensor>> {
    let dir = host.path("/sys/class/power_supply");
    let all = glob(&dir.join("BAT*"));
    if all.is_empty() {
        bail!("no battery in {} (BAT*)", dir.display());
    }
    let mut discharging = Vec::new();
    let mut not = Vec::new();
    for bat in all {
        let status = read_text(&bat.join("status"))?;
        if status == "Discharging" {
            discharging.push(bat);
        } else {
            not.push(format!("{} is {status}", name(&bat)));
        }
    }
    if discharging.is_empty() {
        bail!("{} (on AC power the battery does not measure the machine's draw: unplug the charger, or measure at the supply)", not.join(", "));
    }
    let mut sensor = Battery { batteries: discharging };
    sensor.read()?;
    Ok(Box::new(sensor))
}

fn name(bat: &Path) -> String {
    bat.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// One battery's draw in watts. Some drivers sign the discharge current negative.
fn watts(bat: &Path) -> Result<f64> {
    let power = bat.join("power_now");
    if power.exists() {
        return Ok(read_number(&power, "a power in microwatts")?.abs() * 1e-6);
    }
    let amps = read_number(&bat.join("current_now"), "a current in microamps")?;
    let volts = read_number(&bat.join("voltage_now"), "a voltage in microvolts")?;
    Ok((amps * volts).abs() * 1e-12)
}

impl Sensor for Battery {
    fn name(&self) -> String {
        let names: Vec<String> = self.batteries.iter().map(|b| name(b)).collect();
        format!("battery {}", names.join("+"))
    }

    fn read(&mut self) -> Result<Reading> {
        let mut total = 0.0;
        for bat in &self.batteries {
            let status = read_text(&bat.join("status"))?;
            if status != "Discharging" {
                bail!("battery {} is {status} now: on AC power it does not measure the machine's draw", name(bat));
            }
            total += watts(bat)?;
        }
        Ok(Reading::Watts(total))
    }
}

#[cfg(test)]
mod tests {
    use super::super::host::write_tree;
    use super::*;

    fn watts_of(s: &mut dyn Sensor) -> f64 {
        match s.read().unwrap() {
            Reading::Watts(w) => w,
            Reading::Joules(_) => panic!("a battery reads power"),
        }
    }

    #[test]
    fn power_now_or_current_times_voltage_while_discharging() {
        let dir = tempfile::tempdir().unwrap();
        let b = "sys/class/power_supply/BAT0";
        write_tree(dir.path(), &[(&format!("{b}/status"), "Discharging\n"), (&format!("{b}/power_now"), "8543000\n"), ("sys/class/power_supply/AC/online", "0\n")]);
        let mut s = open(&Host::fixture(dir.path())).unwrap();
        assert_eq!(s.name(), "battery BAT0");
        assert!((watts_of(&mut *s) - 8.543).abs() < 1e-9);
        std::fs::remove_file(dir.path().join(b).join("power_now")).unwrap();
        write_tree(dir.path(), &[(&format!("{b}/current_now"), "-700000\n"), (&format!("{b}/voltage_now"), "11400000\n")]);
        assert!((watts_of(&mut *s) - 0.7 * 11.4).abs() < 1e-9);
        // Plugged in midway: an error that says why, not a charging current read as draw.
        std::fs::write(dir.path().join(b).join("status"), "Charging\n").unwrap();
        let e = s.read().unwrap_err().to_string();
        assert!(e.contains("BAT0 is Charging now"), "{e}");
    }

    #[test]
    fn a_battery_on_ac_is_not_a_sensor() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(&Host::fixture(dir.path())).err().unwrap().to_string();
        assert!(e.contains("no battery in"), "{e}");
        write_tree(dir.path(), &[("sys/class/power_supply/BAT0/status", "Not charging\n"), ("sys/class/power_supply/BAT0/power_now", "0\n"), ("sys/class/power_supply/BAT1/status", "Full\n")]);
        let e = open(&Host::fixture(dir.path())).err().unwrap().to_string();
        assert!(e.starts_with("BAT0 is Not charging, BAT1 is Full (on AC power"), "{e}");
    }

    #[test]
    fn garbage_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_tree(dir.path(), &[("sys/class/power_supply/BAT0/status", "Discharging\n"), ("sys/class/power_supply/BAT0/power_now", "lots\n")]);
        let e = open(&Host::fixture(dir.path())).err().unwrap().to_string();
        assert!(e.contains("BAT0/power_now: \"lots\" is not a power in microwatts"), "{e}");
    }
}
