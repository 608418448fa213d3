//! Fuzz targets of the sensor readings edge-run parses: a `file:` sensor's text, the Pi 5's
//! `vcgencmd pmic_read_adc` output and the sysfs numbers every other sensor reads. Here because
//! the parsers are private to `power`; the harness is `fuzz/` (see `src/fuzz_targets.rs`).

use edge_fuzz::check;

fn file_reading(data: &[u8]) -> String {
    format!("{:?}", super::file::parse(&String::from_utf8_lossy(data)))
}

fn pmic(data: &[u8]) -> String {
    match super::rpi5::parse(&String::from_utf8_lossy(data)) {
        Ok(rails) => format!("ok {}", rails.len()),
        Err(e) => format!("{e:#}"),
    }
}

fn sysfs_number(data: &[u8]) -> String {
    let t = String::from_utf8_lossy(data);
    format!("{:?} {}", super::host::parse_finite(&t).is_some(), super::host::quoted(&t).len())
}

const PI5: &str = "     3V7_WL_SW_A current(0)=0.00000000A
      VDD_CORE_A current(7)=2.94480000A
          HDMI_A current(22)=0.02014800A
     3V7_WL_SW_V volt(8)=3.71927600V
      VDD_CORE_V volt(15)=0.72333300V
          HDMI_V volt(23)=5.14800000V
        EXT5V_V volt(24)=5.12724000V
         BATT_V volt(25)=0.00000000V
";

#[test]
fn fuzz_sensor_file() {
    let seeds = ["4.2 W", "4.2W", "123.4 J\n", "  0.5\n"].iter().map(|s| s.as_bytes().to_vec()).collect();
    check("sensor_file", seeds, 100000, file_reading);
}

#[test]
fn fuzz_sensor_pmic() {
    check("sensor_pmic", vec![PI5.as_bytes().to_vec()], 100000, pmic);
}

#[test]
fn fuzz_sensor_sysfs() {
    let seeds = ["5123456\n", "12.5", "-1", "262143328850\n"].iter().map(|s| s.as_bytes().to_vec()).collect();
    check("sensor_sysfs", seeds, 100000, sysfs_number);
}
