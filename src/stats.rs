//! Timings, memory figures and the summary statistics of repeated measurements.

/// Peak resident set size of this process in bytes: `VmHWM` from `/proc/self/status`, else
/// `getrusage`'s `ru_maxrss`. `None` where neither is available.
pub fn peak_rss_bytes() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
        if let Some(v) = parse_status_kb(&s, "VmHWM:") {
            return Some(v * 1024);
        }
    }
    rusage_maxrss()
}

/// Resident set size of this process now, in bytes (`VmRSS` of `/proc/self/status`).
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kb(&s, "VmRSS:").map(|v| v * 1024)
}

fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(unix)]
fn rusage_maxrss() -> Option<u64> {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let v = ru.ru_maxrss as u64;
    // Linux reports kilobytes, macOS bytes.
    if cfg!(target_os = "macos") {
        Some(v)
    } else {
        Some(v * 1024)
    }
}

#[cfg(not(unix))]
fn rusage_maxrss() -> Option<u64> {
    None
}

/// `1234567` -> `"1.18 MiB"`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Tokens per second, or `None` when nothing was timed.
pub fn rate(tokens: usize, seconds: f64) -> Option<f64> {
    (tokens > 0 && seconds > 0.0).then(|| tokens as f64 / seconds)
}

pub fn fmt_rate(r: Option<f64>) -> String {
    match r {
        Some(r) => format!("{r:.2} tokens/s"),
        None => "n/a".into(),
    }
}

/// Summary of repeated measurements (bench: tokens per second of each repetition).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub samples: Vec<f64>,
    pub median: f64,
    pub mean: f64,
    /// Sample standard deviation (0 for one sample).
    pub stddev: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(samples: Vec<f64>) -> Summary {
        let n = samples.len().max(1) as f64;
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => 0.0,
            l if l % 2 == 1 => sorted[l / 2],
            l => (sorted[l / 2 - 1] + sorted[l / 2]) / 2.0,
        };
        let mean = samples.iter().sum::<f64>() / n;
        let var = if samples.len() > 1 {
            samples.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Summary {
            median,
            mean,
            stddev: var.sqrt(),
            min: sorted.first().copied().unwrap_or(0.0),
            max: sorted.last().copied().unwrap_or(0.0),
            samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_statistics() {
        let s = Summary::of(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(s.median, 2.5);
        assert_eq!(s.mean, 4.0);
        assert_eq!((s.min, s.max), (1.0, 10.0));
        // Sample standard deviation: squared deviations 1 + 9 + 4 + 36 = 50, over n - 1 = 3.
        assert!((s.stddev - (50.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let one = Summary::of(vec![5.0]);
        assert_eq!((one.median, one.stddev), (5.0, 0.0));
    }

    #[test]
    fn parses_proc_status() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(parse_status_kb(s, "VmHWM:"), Some(2048));
        assert_eq!(parse_status_kb(s, "VmRSS:"), Some(1024));
        assert_eq!(parse_status_kb(s, "VmSwap:"), None);
    }

    #[test]
    fn peak_rss_is_known_here() {
        let p = peak_rss_bytes().expect("peak RSS");
        assert!(p > 0);
        assert!(rusage_maxrss().unwrap_or(1) > 0);
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
