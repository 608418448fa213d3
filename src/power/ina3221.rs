//! The INA3221 three-channel power monitor on Jetson modules, in either layout the kernel gives:
//!
//! - hwmon (JetPack 5/6, Orin): `/sys/class/hwmon/hwmonN/` with `name` = `ina3221`; channel
//!   1-3's `inC_label` (the rail), `inC_input` (bus voltage, mV), `currC_input` (mA). in4-in6
//!   are shunt voltages and curr4 a summed current, not rails: only channels 1-3 are read.
//! - iio (JetPack 4: Nano, TX2, Xavier): NVIDIA's `ina3221x` driver, `iio:deviceN/` with
//!   `rail_name_C` and `in_power{C}_input` (mW), C from 0.
//!
//! `VDD_IN` (`POM_5V_IN` on the Nano) is the module's whole input, the other rails parts of it:
//! that rail alone is the total where there is one. Where there is none (AGX Orin labels its
//! rails otherwise), the sum of every rail is the total, and the name says so. Channels labelled
//! `NC` (not connected) are skipped.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::host::{glob, read_number, read_text, Host};
use super::{Reading, Sensor};

/// Labels of the rail that is a module's whole input.
const TOTAL_RAILS: &[&str] = &["VDD_IN", "POM_5V_IN"];

enum Source {
    /// Bus voltage (mV) and current (mA) files.
    Hwmon { millivolts: PathBuf, milliamps: PathBuf },
    /// A power file (mW).
    Iio { milliwatts: PathBuf },
}

struct Channel {
    label: String,
    source: Source,
}

impl Channel {
    fn watts(&self) -> Result<f64> {
        Ok(match &self.source {
            Source::Hwmon { millivolts, milliamps } => {
                read_number(millivolts, "a bus voltage in millivolts")? * read_number(milliamps, "a current in milliamps")? * 1e-6
            }
            Source::Iio { milliwatts } => read_number(milliwatts, "a power in milliwatts")? * 1e-3,
        })
    }
}

pub struct Ina3221 {
    label: String,
    channels: Vec<Channel>,
}

pub fn open(host: &Host) -> Result<Box<dyn Sensor>> {
    let mut channels = hwmon_channels(host)?;
    channels.extend(iio_channels(host)?);
    if channels.is_empty() {
        bail!(
            "no ina3221 in {} and no ina3221x iio device in {} or {} (not a Jetson, or the driver is not loaded)",
            host.path("/sys/class/hwmon").display(),
            host.path("/sys/bus/i2c/drivers/ina3221x").display(),
            host.path("/sys/bus/iio/devices").display()
        );
    }
    let (label, channels) = match channels.iter().position(|c| TOTAL_RAILS.contains(&c.label.as_str())) {
        Some(i) => {
            let total = channels.swap_remove(i);
            (format!("INA3221 {}", total.label), vec![total])
        }
        None => {
            let names: Vec<&str> = channels.iter().map(|c| c.label.as_str()).collect();
            (format!("INA3221 sum of {} (no VDD_IN rail)", names.join("+")), channels)
        }
    };
    let mut sensor = Ina3221 { label, channels };
    // A file that holds garbage is reported now, not at the first sample.
    sensor.read()?;
    Ok(Box::new(sensor))
}

/// Channels 1-3 of every hwmon device named `ina3221` that has both files of the channel.
fn hwmon_channels(host: &Host) -> Result<Vec<Channel>> {
    let mut out = Vec::new();
    for dev in glob(&host.path("/sys/class/hwmon/hwmon*")) {
        if read_text(&dev.join("name")).ok().as_deref() != Some("ina3221") {
            continue;
        }
        for c in 1..=3 {
            let (millivolts, milliamps) = (dev.join(format!("in{c}_input")), dev.join(format!("curr{c}_input")));
            if !millivolts.is_file() || !milliamps.is_file() {
                continue; // a channel disabled in the device tree has no files
            }
            let label = label_or(&dev.join(format!("in{c}_label")), || format!("{} channel {c}", file_name(&dev)))?;
            if label != "NC" {
                out.push(Channel { label, source: Source::Hwmon { millivolts, milliamps } });
            }
        }
    }
    Ok(out)
}

/// Every rail of every `ina3221x` iio device, once (the driver's and the bus's folder are the
/// same device).
fn iio_channels(host: &Host) -> Result<Vec<Channel>> {
    let mut devices = glob(&host.path("/sys/bus/i2c/drivers/ina3221x/*/iio:device*"));
    devices.extend(glob(&host.path("/sys/bus/iio/devices/iio:device*")).into_iter().filter(|d| read_text(&d.join("name")).ok().as_deref() == Some("ina3221x")));
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for dev in devices {
        let id = dev.canonicalize().unwrap_or_else(|_| dev.clone());
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        for c in 0..3 {
            let milliwatts = dev.join(format!("in_power{c}_input"));
            if !milliwatts.is_file() {
                continue;
            }
            let label = label_or(&dev.join(format!("rail_name_{c}")), || format!("{} channel {c}", file_name(&dev)))?;
            if label != "NC" {
                out.push(Channel { label, source: Source::Iio { milliwatts } });
            }
        }
    }
    Ok(out)
}

/// A label file's text, or `fallback` where there is none (an unlabelled channel still counts).
fn label_or(path: &Path, fallback: impl FnOnce() -> String) -> Result<String> {
    if !path.exists() {
        return Ok(fallback());
    }
    let label = read_text(path)?;
    Ok(if label.is_empty() { fallback() } else { label })
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

impl Sensor for Ina3221 {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn read(&mut self) -> Result<Reading> {
        let mut watts = 0.0;
        for c in &self.channels {
            watts += c.watts()?;
        }
        Ok(Reading::Watts(watts))
    }
}

#[cfg(test)]
mod tests {
    use super::super::host::write_tree;
    use super::*;

    fn watts(s: &mut dyn Sensor) -> f64 {
        match s.read().unwrap() {
            Reading::Watts(w) => w,
            Reading::Joules(_) => panic!("the INA3221 reads power"),
        }
    }

    /// An Orin's hwmon folder, as JetPack 6 lays it out (labels, mV, mA; in4-6 shunt voltages).
    fn orin(root: &Path) {
        let d = "sys/class/hwmon/hwmon1";
        write_tree(
            root,
            &[
                ("sys/class/hwmon/hwmon0/name", "thermal\n"),
                ("sys/class/hwmon/hwmon0/in1_input", "1\n"),
                ("sys/class/hwmon/hwmon0/curr1_input", "1\n"),
                (&format!("{d}/name"), "ina3221\n"),
                (&format!("{d}/in1_label"), "VDD_IN\n"),
                (&format!("{d}/in1_input"), "5072\n"),
                (&format!("{d}/curr1_input"), "1224\n"),
                (&format!("{d}/in2_label"), "VDD_CPU_GPU_CV\n"),
                (&format!("{d}/in2_input"), "5064\n"),
                (&format!("{d}/curr2_input"), "406\n"),
                (&format!("{d}/in3_label"), "VDD_SOC\n"),
                (&format!("{d}/in3_input"), "5064\n"),
                (&format!("{d}/curr3_input"), "375\n"),
                (&format!("{d}/in4_input"), "24\n"),
                (&format!("{d}/curr4_input"), "2005\n"),
            ],
        );
    }

    #[test]
    fn vdd_in_is_the_total() {
        let dir = tempfile::tempdir().unwrap();
        orin(dir.path());
        let mut s = open(&Host::fixture(dir.path())).unwrap();
        assert_eq!(s.name(), "INA3221 VDD_IN");
        assert!((watts(&mut *s) - 5.072 * 1.224).abs() < 1e-9);
    }

    #[test]
    fn without_vdd_in_every_rail_is_summed_and_unlabelled_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        orin(dir.path());
        let d = dir.path().join("sys/class/hwmon/hwmon1");
        // The total's label is gone and channel 3's current file is missing (disabled channel).
        std::fs::remove_file(d.join("in1_label")).unwrap();
        std::fs::remove_file(d.join("curr3_input")).unwrap();
        let mut s = open(&Host::fixture(dir.path())).unwrap();
        assert_eq!(s.name(), "INA3221 sum of hwmon1 channel 1+VDD_CPU_GPU_CV (no VDD_IN rail)");
        assert!((watts(&mut *s) - (5.072 * 1.224 + 5.064 * 0.406)).abs() < 1e-9);
        std::fs::write(d.join("in2_label"), "NC\n").unwrap();
        assert_eq!(open(&Host::fixture(dir.path())).unwrap().name(), "INA3221 sum of hwmon1 channel 1 (no VDD_IN rail)");
    }

    #[test]
    fn the_jetpack4_iio_layout_reads_milliwatts() {
        let dir = tempfile::tempdir().unwrap();
        let d = "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0";
        write_tree(
            dir.path(),
            &[
                (&format!("{d}/name"), "ina3221x\n"),
                (&format!("{d}/rail_name_0"), "POM_5V_IN\n"),
                (&format!("{d}/in_power0_input"), "2451\n"),
                (&format!("{d}/rail_name_1"), "POM_5V_GPU\n"),
                (&format!("{d}/in_power1_input"), "80\n"),
                (&format!("{d}/rail_name_2"), "POM_5V_CPU\n"),
                (&format!("{d}/in_power2_input"), "561\n"),
            ],
        );
        let mut s = open(&Host::fixture(dir.path())).unwrap();
        assert_eq!(s.name(), "INA3221 POM_5V_IN");
        assert!((watts(&mut *s) - 2.451).abs() < 1e-9);
    }

    #[test]
    fn garbage_and_absence_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(&Host::fixture(dir.path())).err().unwrap().to_string();
        assert!(e.contains("no ina3221 in") && e.contains("not a Jetson"), "{e}");
        orin(dir.path());
        std::fs::write(dir.path().join("sys/class/hwmon/hwmon1/curr1_input"), "1.2.3\n").unwrap();
        let e = open(&Host::fixture(dir.path())).err().unwrap().to_string();
        assert!(e.contains("hwmon1/curr1_input: \"1.2.3\" is not a current in milliamps"), "{e}");
    }
}
