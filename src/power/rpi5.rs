//! The Raspberry Pi 5's PMIC (Renesas DA9091) ADC, which only the firmware reads:
//! `vcgencmd pmic_read_adc` prints each rail's current and voltage, one per line:
//!
//! ```text
//!       VDD_CORE_A current(7)=2.94480000A
//!       VDD_CORE_V volt(15)=0.72333300V
//!          EXT5V_V volt(24)=5.15638000V
//! ```
//!
//! A rail's power is its `_A` times its `_V`. The PMIC measures no current on the 5 V input
//! (`EXT5V_V` has only a voltage), so the board's total is an estimate: the sum over the rails
//! that give both, which is the SoC and memory side and misses USB and PCIe devices and the
//! regulators' losses. The name says so. A Pi 4 has no such PMIC ADC: there is nothing to read.
//!
//! Each read runs the program (a few milliseconds); the meter spaces its samples so that
//! costs under 1% of a core (see `meter.rs`).

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{anyhow, bail, Result};

use super::host::{quoted, Host};
use super::{Reading, Sensor};

const ARGS: &[&str] = &["pmic_read_adc"];

/// What to read from the output.
#[derive(Debug, Clone, PartialEq)]
pub enum Pick {
    /// Every rail that gives both current and voltage, summed.
    Total,
    /// One rail, by its name without `_A`/`_V` (`VDD_CORE`).
    Rail(String),
}

pub struct Pmic {
    program: String,
    args: Vec<String>,
    pick: Pick,
}

pub fn open(host: &Host) -> Result<Box<dyn Sensor>> {
    let Some(program) = &host.vcgencmd else { bail!("vcgencmd {}", Host::no_vcgencmd_reason()) };
    open_program(program, ARGS.iter().map(|a| a.to_string()).collect(), Pick::Total)
}

/// A sensor reading `program args` as `vcgencmd pmic_read_adc` output (board rails use it too).
pub fn open_program(program: &str, args: Vec<String>, pick: Pick) -> Result<Box<dyn Sensor>> {
    let mut sensor = Pmic { program: program.to_string(), args, pick };
    sensor.read()?;
    Ok(Box::new(sensor))
}

impl Pmic {
    fn command_line(&self) -> String {
        std::iter::once(self.program.as_str()).chain(self.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
    }
}

impl Sensor for Pmic {
    fn name(&self) -> String {
        match &self.pick {
            Pick::Total => "RPi 5 PMIC (estimate: sum of rails)".into(),
            Pick::Rail(r) => format!("RPi 5 PMIC {r}"),
        }
    }

    fn read(&mut self) -> Result<Reading> {
        let cmd = self.command_line();
        // vcgencmd answers a command the firmware lacks (a Pi 4's) with `error=N error_msg=...`,
        // with or without a failing exit status.
        let out = run_raw(&self.program, &self.args)?;
        if let Some(said) = [&out.stdout, &out.stderr].into_iter().find(|t| t.contains("error_msg")) {
            return Err(no_pmic(&cmd, said));
        }
        let text = checked(&cmd, out)?;
        let rails = parse(&text).map_err(|e| anyhow!("`{cmd}`: {e}"))?;
        let with_both = || rails.iter().filter_map(|(n, r)| Some((n, r.amps? * r.volts?)));
        match &self.pick {
            Pick::Total => {
                if rails.is_empty() {
                    return Err(no_pmic(&cmd, &text));
                }
                let sum: f64 = with_both().map(|(_, w)| w).sum();
                if with_both().next().is_none() {
                    bail!("`{cmd}`: no rail gives both a current and a voltage ({} rails)", rails.len());
                }
                Ok(Reading::Watts(sum))
            }
            Pick::Rail(name) => match rails.get(name.as_str()) {
                Some(Rail { amps: Some(a), volts: Some(v) }) => Ok(Reading::Watts(a * v)),
                Some(Rail { amps: None, .. }) => bail!("`{cmd}`: rail {name} has no current (_A) reading"),
                Some(_) => bail!("`{cmd}`: rail {name} has no voltage (_V) reading"),
                None => {
                    let names: Vec<&str> = rails.keys().map(String::as_str).collect();
                    bail!("`{cmd}`: no rail {name} (rails: {})", if names.is_empty() { "none".to_string() } else { names.join(", ") })
                }
            },
        }
    }
}

/// The firmware has no PMIC to read: `said` is what the command printed.
fn no_pmic(cmd: &str, said: &str) -> anyhow::Error {
    anyhow!(
        "`{cmd}` printed no PMIC readings ({}): a Raspberry Pi 4 or older has no PMIC ADC; measure at the supply with a USB meter and give --power-sensor file:PATH",
        quoted(said)
    )
}

/// What a program printed, and how it ended.
pub struct Output {
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args`, or says why it cannot run (not installed, not executable).
pub fn run_raw(program: &str, args: &[String]) -> Result<Output> {
    let out = Command::new(program).args(args).output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("{program} not found (not a Raspberry Pi, or its firmware tools are not installed: apt install raspi-utils)"),
        _ => anyhow!("cannot run `{program}`: {}", super::host::io_reason(&e)),
    })?;
    Ok(Output {
        success: out.status.success(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The standard output of a run that succeeded, else an error with what it said.
fn checked(cmd: &str, out: Output) -> Result<String> {
    if !out.success {
        let said = if out.stderr.trim().is_empty() { &out.stdout } else { &out.stderr };
        bail!("`{cmd}` failed ({}): {}", out.status, quoted(said));
    }
    Ok(out.stdout)
}

/// Runs `program args`; its standard output, or why there is none (not installed, failed).
pub fn run(program: &str, args: &[String]) -> Result<String> {
    let cmd = std::iter::once(program).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ");
    checked(&cmd, run_raw(program, args)?)
}

/// One rail's readings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rail {
    pub amps: Option<f64>,
    pub volts: Option<f64>,
}

/// The rails of a `pmic_read_adc` output, by name. Lines without `=` are ignored (a header, an
/// empty line); a line with `=` that is not `NAME_A current(N)=X.XA` or `NAME_V volt(N)=X.XV` is
/// an error naming the line.
pub fn parse(text: &str) -> Result<BTreeMap<String, Rail>> {
    let mut rails: BTreeMap<String, Rail> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| l.contains('=')) {
        let bad = || anyhow!("line {} is not `NAME_A current(N)=X.XA` or `NAME_V volt(N)=X.XV`", quoted(line));
        let (left, value) = line.split_once('=').ok_or_else(bad)?;
        let name = left.split_whitespace().next().ok_or_else(bad)?;
        let (rail, unit) = if let Some(r) = name.strip_suffix("_A") {
            (r, 'A')
        } else if let Some(r) = name.strip_suffix("_V") {
            (r, 'V')
        } else {
            return Err(bad());
        };
        let number = value.trim().strip_suffix(unit).ok_or_else(bad)?;
        let number = super::host::parse_finite(number).ok_or_else(bad)?;
        let entry = rails.entry(rail.to_string()).or_default();
        if unit == 'A' {
            entry.amps = Some(number);
        } else {
            entry.volts = Some(number);
        }
    }
    Ok(rails)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// `vcgencmd pmic_read_adc` on a Pi 5 (firmware 2024), as users post it: currents first,
    /// then voltages; EXT5V_V and BATT_V give only a voltage.
    pub const PI5_OUTPUT: &str = "     3V7_WL_SW_A current(0)=0.00000000A
       3V3_SYS_A current(1)=0.05171000A
       1V8_SYS_A current(2)=0.15905500A
      DDR_VDD2_A current(3)=0.02049600A
      DDR_VDDQ_A current(4)=0.00000000A
       1V1_SYS_A current(5)=0.18934000A
       0V8_SYS_A current(6)=0.33481500A
      VDD_CORE_A current(7)=2.94480000A
       3V3_DAC_A current(17)=0.00048840A
       3V3_ADC_A current(18)=0.00036630A
       0V8_AON_A current(16)=0.00469620A
          HDMI_A current(22)=0.02014800A
     3V7_WL_SW_V volt(8)=3.71062200V
       3V3_SYS_V volt(9)=3.31670000V
       1V8_SYS_V volt(10)=1.79963200V
      DDR_VDD2_V volt(11)=1.11218600V
      DDR_VDDQ_V volt(12)=0.60439560V
       1V1_SYS_V volt(13)=1.10329600V
       0V8_SYS_V volt(14)=0.80073250V
      VDD_CORE_V volt(15)=0.72333300V
       3V3_DAC_V volt(20)=3.30402000V
       3V3_ADC_V volt(21)=3.30585200V
       0V8_AON_V volt(19)=0.80073250V
          HDMI_V volt(23)=5.14402000V
         EXT5V_V volt(24)=5.15638000V
          BATT_V volt(25)=0.00000000V
";

    /// A script in `dir` that prints `output` and exits with `code`: a stand-in `vcgencmd`.
    pub fn fake_vcgencmd(dir: &Path, output: &str, code: i32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let out = dir.join("vcgencmd.out");
        std::fs::write(&out, output).unwrap();
        let script = dir.join("vcgencmd");
        std::fs::write(&script, format!("#!/bin/sh\n[ \"$1\" = pmic_read_adc ] || exit 2\ncat '{}'\nexit {code}\n", out.display())).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Another test thread that forked while the script was open for writing holds that
        // descriptor until its child execs, and exec of the script fails meanwhile (ETXTBSY):
        // wait for one run to succeed, after which no writer is left.
        for _ in 0..1000 {
            match Command::new(&script).arg("pmic_read_adc").output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => std::thread::sleep(std::time::Duration::from_millis(1)),
                _ => break,
            }
        }
        script
    }

    fn host(script: &Path) -> Host {
        Host { vcgencmd: Some(script.display().to_string()), ..Host::default() }
    }

    fn expected_total() -> f64 {
        parse(PI5_OUTPUT).unwrap().values().filter_map(|r| Some(r.amps? * r.volts?)).sum()
    }

    #[test]
    fn the_pi5_output_parses_and_v_only_rails_are_left_out_of_the_sum() {
        let rails = parse(PI5_OUTPUT).unwrap();
        assert_eq!(rails.len(), 14);
        assert_eq!(rails["VDD_CORE"], Rail { amps: Some(2.9448), volts: Some(0.723333) });
        assert_eq!(rails["EXT5V"], Rail { amps: None, volts: Some(5.15638) });
        let dir = tempfile::tempdir().unwrap();
        let script = fake_vcgencmd(dir.path(), PI5_OUTPUT, 0);
        let mut s = open(&host(&script)).unwrap();
        assert_eq!(s.name(), "RPi 5 PMIC (estimate: sum of rails)");
        let Reading::Watts(w) = s.read().unwrap() else { panic!("watts") };
        // VDD_CORE's 2.13 W and the rest's few hundred mW; EXT5V's voltage alone adds nothing.
        assert!((w - expected_total()).abs() < 1e-12 && (2.5..3.5).contains(&w), "{w}");
        let mut core = open_program(&script.display().to_string(), vec!["pmic_read_adc".into()], Pick::Rail("VDD_CORE".into())).unwrap();
        let Reading::Watts(w) = core.read().unwrap() else { panic!("watts") };
        assert!((w - 2.9448 * 0.723333).abs() < 1e-12);
        let e = open_program(&script.display().to_string(), vec!["pmic_read_adc".into()], Pick::Rail("EXT5V".into())).err().unwrap().to_string();
        assert!(e.contains("rail EXT5V has no current"), "{e}");
    }

    #[test]
    fn a_pi4_or_a_missing_vcgencmd_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        // A Pi 4's firmware does not know the command: it prints nothing the PMIC would.
        let script = fake_vcgencmd(dir.path(), "", 0);
        let e = open(&host(&script)).err().unwrap().to_string();
        assert!(e.contains("printed no PMIC readings") && e.contains("Raspberry Pi 4"), "{e}");
        for code in [0, 2] {
            let script = fake_vcgencmd(dir.path(), "error=2 error_msg=\"Command not registered\"\n", code);
            let e = open(&host(&script)).err().unwrap().to_string();
            assert!(e.contains("printed no PMIC readings") && e.contains("Command not registered") && e.contains("Raspberry Pi 4"), "{e}");
        }
        let script = fake_vcgencmd(dir.path(), "   VDD_CORE_A current(7)=\n", 0);
        let e = open(&host(&script)).err().unwrap().to_string();
        assert!(e.contains("is not `NAME_A current(N)=X.XA`"), "{e}");
        let script = fake_vcgencmd(dir.path(), "VCHI initialization failed\n", 255);
        let e = open(&host(&script)).err().unwrap().to_string();
        assert!(e.contains("failed (exit status: 255)") && e.contains("VCHI initialization failed"), "{e}");
        let missing = dir.path().join("no-such-vcgencmd");
        let e = open(&host(&missing)).err().unwrap().to_string();
        assert!(e.contains("not found (not a Raspberry Pi"), "{e}");
        let e = open(&Host::fixture(dir.path())).err().unwrap().to_string();
        assert!(e.contains("EDGE_RUN_VCGENCMD"), "{e}");
    }

    #[test]
    fn garbage_values_name_the_line() {
        let e = parse("  VDD_CORE_A current(7)=2.9x4A\n").unwrap_err().to_string();
        assert!(e.contains("VDD_CORE_A current(7)=2.9x4A"), "{e}");
        assert!(parse("VDD_CORE_A current(7)=2.94V\n").is_err(), "a current in volts");
        assert!(parse("header without a value\n\n").unwrap().is_empty());
    }
}
