//! The memory controller under a live squeeze: while SmolLM2 generates, the memory limit of the
//! process is lowered below its resident set, then restored. The controller must step down
//! (and the process get under the limit) before anything kills it, keep generating, and step
//! back up once the limit is restored.
//!
//! The limit is simulated (`EDGE_RUN_MEM_LIMIT`: a cgroup holding the process alone, its usage
//! the resident set), so the test runs everywhere. A real cgroup (v1, made as root here) does
//! not squeeze this way: the checkpoint's page cache stays charged to the cgroup that first
//! read it, so a new cgroup's usage is the anonymous memory alone, and the kernel refuses a
//! limit below that (EBUSY) instead of reclaiming.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

fn rss_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Lines of the child's stderr as they come.
fn lines_of(stderr: std::process::ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Wait for a line containing `what`, collecting every line seen into `seen`.
fn wait_for(rx: &mpsc::Receiver<String>, what: &str, seen: &mut Vec<String>, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.contains(what);
                seen.push(l);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

/// How the test moves the limit.
trait Limit {
    fn set(&self, bytes: u64) -> std::io::Result<()>;
}

struct Simulated(PathBuf);

impl Limit for Simulated {
    fn set(&self, bytes: u64) -> std::io::Result<()> {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, bytes.to_string())?;
        std::fs::rename(&tmp, &self.0)
    }
}

fn squeeze(mut cmd: Command, limit: &dyn Limit, what: &str) {
    let m = smollm_q8_profiled();
    cmd.args(["-m", m.to_str().unwrap(), "-p", "Once upon a time", "-n", "1500", "--temp", "0", "--ignore-eos", "--json"])
        .env("EDGE_RUN_CACHE", scratch().join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running edge-run");
    let pid = child.id();
    let rx = lines_of(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    assert!(wait_for(&rx, "memory controller:", &mut seen, Duration::from_secs(60)), "no controller started: {seen:#?}");
    // Let decoding start, then squeeze 40 MiB below the resident set.
    std::thread::sleep(Duration::from_millis(300));
    let rss = rss_of(pid).expect("the child's VmRSS");
    let squeezed = rss - 40 * MIB;
    limit.set(squeezed).unwrap_or_else(|e| panic!("{what}: cannot lower the limit to {squeezed}: {e}"));
    assert!(wait_for(&rx, "low-memory", &mut seen, Duration::from_secs(30)), "{what}: no step down after the squeeze: {seen:#?}");
    // A move makes a large unit's new view over several tokens (more in a debug build): wait
    // until the steps have brought the process under the limit.
    let end = Instant::now() + Duration::from_secs(60);
    let mut under = false;
    while Instant::now() < end {
        if rss_of(pid).is_some_and(|r| r <= squeezed) {
            under = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(under, "{what}: the resident set stayed over the squeezed limit {squeezed} for 60 s: {seen:#?}");
    std::thread::sleep(Duration::from_millis(500));
    limit.set(4 << 30).unwrap();
    assert!(wait_for(&rx, "recovered", &mut seen, Duration::from_secs(30)), "{what}: no step back up: {seen:#?}");
    let out = child.wait_with_output().expect("waiting for edge-run");
    seen.extend(rx.try_iter());
    assert!(out.status.success(), "{what}: edge-run failed ({}): {seen:#?}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["n_generated"], 1500, "kept generating to the end");
    let events = v["memory_control"]["events"].as_array().unwrap();
    for l in seen.iter().filter(|l| l.starts_with("edge-run: memory: ")) {
        eprintln!("{l}");
    }
    let downs: Vec<_> = events.iter().filter(|e| e["cause"] == "low-memory").collect();
    let up = events.iter().position(|e| e["cause"] == "recovered").expect("a recovered event");
    assert!(!downs.is_empty());
    for d in &downs {
        assert!(d["to_rung"].as_u64() > d["from_rung"].as_u64());
        assert!(d["predicted_bytes_after"].as_u64() < d["predicted_bytes_before"].as_u64());
        assert!(!d["actions"].as_array().unwrap().is_empty());
    }
    // The steps down got the process under the squeezed limit (checked above, while it ran:
    // an event's `rss_after` is read the moment its swap ends, before a shrunk KV cache's
    // pages are handed back, so it can sit a few hundred KiB over), and lowered it: the
    // last step down ends well below where the first began. The step up went back up the
    // ladder.
    let last_down = downs.last().unwrap();
    let first_rss = downs[0]["rss_before"].as_u64().unwrap();
    assert!(last_down["rss_after"].as_u64().unwrap() < first_rss - 20 * MIB, "{what}: the steps down did not lower the resident set: {last_down}");
    assert!(events[up]["to_rung"].as_u64() < events[up]["from_rung"].as_u64());
    // Every event names its time, token, cause and bytes, the time it took the decode thread
    // and the longest it kept a token waiting.
    for e in events {
        for k in ["seconds", "token", "tokens", "cause", "source", "rss_before", "rss_after", "predicted_peak_bytes", "step_seconds", "pause_seconds", "prepare_seconds", "swap_seconds"] {
            assert!(!e[k].is_null(), "event without {k}: {e}");
        }
        let secs = |k: &str| e[k].as_f64().unwrap();
        assert!(e["tokens"].as_u64().unwrap() >= 1, "{e}");
        assert!(secs("pause_seconds") > 0.0 && secs("pause_seconds") <= secs("step_seconds"), "{e}");
        assert!(secs("prepare_seconds") <= secs("step_seconds") && secs("swap_seconds") <= secs("pause_seconds"), "{e}");
        let peak = e["predicted_peak_bytes"].as_u64().unwrap();
        assert!(peak >= e["predicted_bytes_before"].as_u64().unwrap() && peak >= e["predicted_bytes_after"].as_u64().unwrap(), "{e}");
    }
    // A move of views makes the new copies beside decode (preparation time) and swaps them in
    // (a pause); the first step down lowers the weights' views first.
    let views: Vec<_> = events.iter().filter(|e| e["actions"].as_array().unwrap().iter().any(|a| a.as_str().unwrap().starts_with("weights"))).collect();
    assert!(!views.is_empty(), "no move of views: {events:#?}");
    for e in &views {
        assert!(e["prepare_seconds"].as_f64().unwrap() > 0.0 && e["swap_seconds"].as_f64().unwrap() > 0.0, "{e}");
    }
}

#[test]
fn a_simulated_limit_squeezes_a_run_down_and_lets_it_back_up() {
    if !have_models() {
        return;
    }
    let file = scratch().join(format!("mem-limit-{}", std::process::id()));
    let limit = Simulated(file.clone());
    limit.set(4 << 30).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-run"));
    cmd.env("EDGE_RUN_MEM_LIMIT", &file);
    squeeze(cmd, &limit, "simulated limit");
    let _ = std::fs::remove_file(file);
}

#[test]
fn without_a_budget_a_run_is_fitted_to_the_free_memory() {
    if !have_models() {
        return;
    }
    let m = smollm_q8_profiled();
    let file = scratch().join(format!("mem-limit-fit-{}", std::process::id()));
    let limit = Simulated(file.clone());
    let gen = |bytes: u64, extra: &[&str]| {
        limit.set(bytes).unwrap();
        let mut args = vec!["-m", m.to_str().unwrap(), "-p", "Once upon a time", "-n", "16", "--temp", "0"];
        args.extend_from_slice(extra);
        run_env(args, &[("EDGE_RUN_MEM_LIMIT", file.as_os_str())])
    };
    // Plenty: the whole run, nothing lowered, said in one line.
    let r = gen(4 << 30, &[]);
    r.ok();
    assert!(r.stderr.contains("fitted to free memory") && r.stderr.contains("nothing lowered"), "{}", r.stderr);
    // 160 MB: planned like --budget for what the cgroup leaves, and held to it.
    let v = gen(160_000_000, &["--json"]).json();
    let b = &v["budget"];
    assert_eq!(b["source"], "fit", "{b}");
    assert!(b["budget_bytes"].as_u64().unwrap() <= 160_000_000);
    assert!(!b["lowered"].as_array().unwrap().is_empty(), "{b}");
    assert!(v["plan"]["bits_per_weight"].as_f64().unwrap() < 8.0, "{}", v["plan"]);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() <= 160_000_000, "{v}");
    // --no-fit: the default views, no plan.
    let v = gen(160_000_000, &["--json", "--no-fit"]).json();
    assert!(v["budget"].is_null());
    assert!(v["memory_control"].is_null());
    assert_eq!(v["plan"]["source"], "default");
    let _ = std::fs::remove_file(file);
}
