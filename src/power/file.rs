//! `--power-sensor file:PATH`: a file that something else keeps current, re-read at every
//! sample. For meters edge-run cannot read itself (a USB power meter's logger, a smart plug) and
//! for tests. It holds one reading:
//!
//! - watts: `4.2`, `4.2 W` or `4.2W`: the power now;
//! - joules: `123.4 J`: a cumulative counter (the meter takes differences; a counter that goes
//!   back is reported as an error and counted from its new value).
//!
//! A writer should write a temporary file and rename it over PATH, or a read may see it half
//! written (which the meter counts as an error, not a reading).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::host::{parse_finite, quoted, read_text};
use super::{Reading, Sensor};

pub struct FileSensor {
    path: PathBuf,
}

pub fn open(path: &Path) -> Result<Box<dyn Sensor>> {
    if path.as_os_str().is_empty() {
        return Err(anyhow!("file: give the path of a file holding watts (\"4.2 W\") or joules (\"123.4 J\"): file:PATH"));
    }
    let mut sensor = FileSensor { path: path.to_path_buf() };
    sensor.read()?;
    Ok(Box::new(sensor))
}

/// A file's text as a reading, or None.
pub fn parse(text: &str) -> Option<Reading> {
    let t = text.trim();
    if let Some(j) = t.strip_suffix(['J', 'j']) {
        return parse_finite(j).map(Reading::Joules);
    }
    let w = t.strip_suffix(['W', 'w']).unwrap_or(t);
    parse_finite(w).map(Reading::Watts)
}

impl Sensor for FileSensor {
    fn name(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn read(&mut self) -> Result<Reading> {
        let text = read_text(&self.path)?;
        parse(&text).ok_or_else(|| {
            anyhow!("{}: {} is not a reading; expected watts (\"4.2\" or \"4.2 W\") or joules (\"123.4 J\")", self.path.display(), quoted(&text))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watts_and_joules_with_or_without_units() {
        assert_eq!(parse("4.2"), Some(Reading::Watts(4.2)));
        assert_eq!(parse("4.2 W\n"), Some(Reading::Watts(4.2)));
        assert_eq!(parse("4.2W"), Some(Reading::Watts(4.2)));
        assert_eq!(parse(" 123.4 J\n"), Some(Reading::Joules(123.4)));
        assert_eq!(parse("1e3j"), Some(Reading::Joules(1000.0)));
        for bad in ["", "W", "4.2 kWh", "four", "nan W", "4.2 J W"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_bad_file_is_named_with_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meter");
        std::fs::write(&p, "4.2 kWh\n").unwrap();
        let e = open(&p).err().unwrap().to_string();
        assert!(e.contains("meter: \"4.2 kWh\" is not a reading; expected watts"), "{e}");
        let e = open(&dir.path().join("absent")).err().unwrap().to_string();
        assert!(e.contains("cannot read") && e.contains("absent: no such file"), "{e}");
        std::fs::write(&p, "5 W").unwrap();
        let s = open(&p).unwrap();
        assert_eq!(s.name(), format!("file {}", p.display()));
    }
}
