//! `edge-run bench`: prompt-processing and generation speed, as llama.cpp's `llama-bench`
//! measures them.
//!
//! For every view (`--bits 8,4,...`, or the one view `--plan`/`--target-bits`/`--weight-budget`
//! or the default picks), every KV cache format (`--kv-bits 16,8`) and every thread count
//! (`-t 1,2`), two tests run from an empty context, or with `-d D` after D positions were
//! prefilled (llama-bench's depth: the tests are labelled `pp512@d4096`, `tg128@d4096`):
//! - `ppN`: one forward pass over N prompt tokens (positions D..D+N), logits of the last only;
//! - `tgN`: N single-token forward passes (positions D..D+N), as decoding runs them.
//!
//! Tokens are fixed pseudo-random ids, the same on every run. Each test runs once to warm up,
//! then `-r` times; the table reports the median tokens/s ± the standard deviation of the
//! repetitions (JSON: every sample, median, mean, stddev, min, max). The model is instantiated
//! anew for each (view, threads), so its buffers are sized for that thread count; on Linux the
//! mapped weights are released and the peak-RSS mark reset between combinations, so each row's
//! peak RSS is its own. Each row also gives the weight bytes one decoded token reads
//! ([`Footprint::decode_bytes`]) plus the KV cache it attends over at depth D (the cache's bytes
//! per position times the D positions it holds) and, for `tgN`, those bytes times the median
//! tokens/s: the bandwidth decoding reached (GB/s), to hold against the memory's.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use edge_runtime::format::keys;
use edge_runtime::kernels;
use edge_runtime::model::Logits;
use serde_json::json;

use crate::budget;
use crate::cli::{BenchArgs, ModelArgs};
use crate::progress::progress_bar;
use crate::report;
use crate::session::{self, KvSettings, Loaded};
use crate::stats::{self, Summary};
use crate::views::{self, Selection};
use edge_runtime::plan::Footprint;

/// One row of the results: a test at one view and thread count.
struct Row {
    view: String,
    selection: serde_json::Value,
    footprint: Footprint,
    threads: usize,
    kv: KvSettings,
    /// KV cache bytes per position, over every layer.
    kv_bytes_per_token: usize,
    kv_bytes: usize,
    /// Positions prefilled before the test (`-d`).
    depth: usize,
    test: String,
    tokens: usize,
    tps: Summary,
    peak_rss: Option<u64>,
    /// Joules per token over the repetitions (not the warm-up), with a power sensor.
    joules_per_token: Option<f64>,
    /// The profile's predicted KL of the view (sum over units), where the checkpoint has one.
    predicted_kl: Option<f64>,
}

impl Row {
    /// Bytes one decoded token reads: the weights, and the keys and values of the positions
    /// the cache holds at the test's depth (at most the window's).
    fn read_bytes(&self) -> u64 {
        let held = self.kv.window.map_or(self.depth, |w| self.depth.min(w.slots));
        self.footprint.decode_bytes + (self.kv_bytes_per_token * held) as u64
    }

    /// For a decode test: [`Row::read_bytes`] per second at the median speed, in GB/s (what the
    /// speed amounts to against the memory's bandwidth); `None` for prefill, which reads the
    /// weights once for many tokens.
    fn read_gb_per_s(&self) -> Option<f64> {
        self.test.starts_with("tg").then(|| self.read_bytes() as f64 * self.tps.median / 1e9)
    }
}

/// The views to measure: one [`ModelArgs`] each (with its label), from `--bits 8,4,...` or the
/// single selection the other view flags (or none) make.
fn view_args(args: &BenchArgs) -> Vec<ModelArgs> {
    let base = ModelArgs {
        model: args.model.clone(),
        no_mmap: args.no_mmap,
        // Timings measure the kernels alone: no checksum thread beside them.
        no_verify: true,
        bits: None,
        plan: args.plan.clone(),
        target_bits: args.target_bits,
        weight_budget: args.weight_budget,
        pack_encoding: args.pack_encoding,
        group_size: args.group_size,
        threads: None,
        device: args.device,
        board: args.board.clone(),
    };
    if args.bits.is_empty() {
        return vec![base];
    }
    let mut seen = Vec::new();
    args.bits
        .iter()
        .filter(|b| {
            let new = !seen.contains(*b);
            seen.push(**b);
            new
        })
        .map(|&b| ModelArgs { bits: Some(b), ..base.clone() })
        .collect()
}

/// A short label of a selection: `8-bit`, `f16`, `plan.toml`, `target 3.5`, `budget 90.0 MiB`.
fn view_label(sel: &Selection, nested: bool, dense_encoding: &str) -> String {
    match &sel.source {
        views::Source::Default if nested => "8-bit".into(),
        views::Source::Default => dense_encoding.into(),
        views::Source::Uniform(b) => format!("{b}-bit"),
        views::Source::File(p) => p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned()),
        views::Source::TargetBits(t) => format!("target {t}"),
        views::Source::WeightBudget(b) => format!("budget {}", stats::human_bytes(*b)),
        views::Source::Budget(b) => format!("budget {}", stats::human_bytes(*b)),
    }
}

/// Fixed pseudo-random token ids in `0..vocab` (xorshift; the same on every run).
fn bench_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab.max(1) as u64) as u32
        })
        .collect()
}

/// The 1-minute load average (Linux `/proc/loadavg`): more runnable threads than cores make
/// multi-threaded timings unreliable (a worker descheduled mid-product stalls the product).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Reset the process's peak-RSS mark to its current RSS (Linux `clear_refs` 5); best effort.
fn reset_peak_rss() {
    if cfg!(target_os = "linux") {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.n_prompt == 0 && args.n_gen == 0 {
        bail!("nothing to measure: --n-prompt and --n-gen are both 0");
    }
    // The energy files go in after every measurement: a folder that cannot take them fails now.
    if let Some(dir) = &args.energy {
        edge_pack::writable::check_dir(dir, &["energy.json", "energy.svg"], "--energy")?;
    }
    let threads: Vec<usize> = if args.threads.is_empty() { vec![kernels::threads()] } else { args.threads.clone() };
    let views = view_args(args);
    let file = session::open(&views[0])?;
    let depth = args.n_depth;
    // The context of every test: its depth and its tokens.
    let ctx = depth + args.n_prompt.max(args.n_gen);
    // Depth is prefilled in forward passes of up to 64 tokens (or the prompt test's size).
    let max_batch = args.n_prompt.max(depth.min(64)).max(1);
    // One parse of the checkpoint per view, each with its own selection and footprint; with
    // --budget, the one view its plan picks.
    let mut planned_kv = None;
    let loads: Vec<Loaded<'_>> = match args.budget {
        None => views.iter().map(|v| Loaded::new(&file, v)).collect::<Result<_>>()?,
        Some(bytes) => {
            let kv = (!args.kv.kv_bits.is_empty()).then(|| args.kv.formats()).map(|f| f[0]);
            let l = Loaded::with(&file, |ck, arch, config| {
                let req = budget::Request { bytes, ctx: Some(ctx), kv, batch: max_batch, default_ctx: ctx };
                let c = budget::select(ck, arch, config, &file.path, "--budget", req)?;
                planned_kv = Some(c.budget.clone());
                Ok(c.selection)
            })?;
            vec![l]
        }
    };
    let (ck, config) = (&loads[0].ck, &loads[0].config);
    for (flag, n) in [("--n-prompt", args.n_prompt), ("--n-gen", args.n_gen)] {
        if depth + n > config.max_seq_len {
            let at = if depth > 0 { format!(" at --n-depth {depth}") } else { String::new() };
            bail!(
                "{flag} {n}{at} exceeds the model's context of {} tokens; use at most {}",
                config.max_seq_len,
                config.max_seq_len.saturating_sub(depth)
            );
        }
    }
    if let (Some(b), false) = (&planned_kv, args.json) {
        let l = &loads[0];
        for line in b.describe(l.footprint.weight_bytes, l.footprint.bits_per_weight(), l.selection.predicted_kl) {
            eprintln!("{line}");
        }
    }
    let formats = match &planned_kv {
        Some(b) => vec![b.shape.kv],
        None => args.kv.formats(),
    };
    let kvs: Vec<KvSettings> = formats.into_iter().map(|f| KvSettings::with_format(&args.kv, f, ctx)).collect::<Result<_>>()?;
    let nested = views::has_nested(ck);
    let dense_encoding = views::dense_encoding(ck);
    let name = ck
        .get_str(keys::NAME)
        .map(str::to_owned)
        .unwrap_or_else(|| file.path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned()));

    let tests: Vec<(String, usize)> = [("pp", args.n_prompt), ("tg", args.n_gen)]
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(t, n)| (if depth > 0 { format!("{t}{n}@d{depth}") } else { format!("{t}{n}") }, n))
        .collect();
    let kernel_name = kernels::kernels().name;
    // The depth's tokens, then the tests'.
    let tokens = bench_tokens(ctx, config.vocab_size);
    let (depth_tokens, tokens) = tokens.split_at(depth);
    let combos = (loads.len() * kvs.len() * threads.len()) as u64;
    // A plan chosen or read from a file is described once, as generate and eval do.
    if !args.json {
        for l in loads.iter().filter(|l| !matches!(l.selection.source, views::Source::Default | views::Source::Uniform(_))) {
            eprintln!("{}", l.selection.describe(&l.footprint));
        }
    }

    let (pb, shown) = progress_bar(combos * tests.len() as u64 * (args.repetitions as u64 + 1), "runs");
    if !args.json && !shown {
        eprintln!(
            "edge-run: bench {} ({name}): {} view(s) x {} KV format(s) x {} thread count(s), {} repetitions after a warm-up, kernels {kernel_name}",
            file.path.display(),
            loads.len(),
            kvs.len(),
            threads.len(),
            args.repetitions
        );
    }

    let board = args.board.as_deref().map(crate::board::Board::load).transpose()?;
    let meter = crate::energy::meter(args.power_sensor.as_deref(), board.as_ref(), args.energy.is_some())?;
    if let (Some(m), false) = (&meter, args.json) {
        eprintln!("edge-run: power sensor: {} (joules per token over the repetitions)", m.sensor_name());
    }
    // Predicted KL of each view from the profile, where there is one.
    let planner = views::profile_planner(ck, loads[0].arch, config, &file.path).ok().flatten();
    let load_before = load_average();
    let mut rows: Vec<Row> = Vec::new();
    // Every (view, KV format, thread count), in that order.
    let (kvs_ref, threads_ref) = (&kvs, &threads);
    let runs = loads.iter().flat_map(|l| kvs_ref.iter().flat_map(move |&kv| threads_ref.iter().map(move |&t| (l, kv, t))));
    for (loaded, kv, t) in runs {
        let sel = &loaded.selection;
        kernels::set_threads(t);
        // Drop what the previous combination left resident, then measure this one's peak.
        file.bytes.release(0, file.bytes.as_bytes().len() as u64);
        reset_peak_rss();
        let mut model = loaded.model(ctx, max_batch, kv)?;
        let (kv_bytes, kv_bytes_per_token) = model.kv_bytes();
        let footprint = loaded.footprint;
        let label = view_label(sel, nested, dense_encoding);
        let mut results = Vec::new();
        for (test, n) in &tests {
            pb.set_message(format!("{label}, KV {}, {t} thread(s), {test}", kv.describe()));
            // The depth, before each test (a prompt test's passes overwrite what follows it).
            model.reset_kv();
            for (i, chunk) in depth_tokens.chunks(max_batch).enumerate() {
                model.forward_batch(chunk, i * max_batch, Logits::Last)?;
            }
            let mut samples = Vec::with_capacity(args.repetitions);
            let mut joules = 0.0;
            for rep in 0..=args.repetitions {
                let j0 = if rep > 0 { meter.as_ref().map(|m| m.joules()) } else { None };
                let start = Instant::now();
                if test.starts_with("pp") {
                    model.forward_batch(&tokens[..*n], depth, Logits::Last)?;
                } else {
                    for (i, &tok) in tokens[..*n].iter().enumerate() {
                        model.forward(tok, depth + i)?;
                    }
                }
                let s = start.elapsed().as_secs_f64();
                if rep > 0 {
                    samples.push(*n as f64 / s.max(1e-9));
                }
                if let (Some(m), Some(j0)) = (&meter, j0) {
                    joules += m.joules() - j0;
                }
                pb.inc(1);
            }
            let jpt = meter.as_ref().map(|_| joules / (*n * args.repetitions.max(1)) as f64);
            results.push((test.clone(), *n, Summary::of(samples), jpt));
        }
        let peak_rss = stats::peak_rss_bytes();
        let predicted_kl = sel.predicted_kl.or_else(|| {
            let p = planner.as_ref()?;
            let views::Source::Uniform(b) = sel.source else { return None };
            p.units.iter().map(|u| u.views.iter().find(|v| v.bits == b).map(|v| v.kl)).sum::<Option<f64>>()
        });
        for (test, n, tps, joules_per_token) in results {
            rows.push(Row {
                view: label.clone(),
                selection: sel.to_json(&footprint),
                footprint,
                threads: t,
                kv,
                kv_bytes_per_token,
                kv_bytes,
                depth,
                test,
                tokens: n,
                tps,
                peak_rss,
                joules_per_token,
                predicted_kl,
            });
        }
    }
    pb.finish_and_clear();
    kernels::set_threads(0);

    if let Some(dir) = &args.energy {
        write_energy(dir, &name, &rows, meter.as_ref().map(|m| m.sensor_name()).unwrap_or_default())?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let results: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "view": r.view,
                    "plan": r.selection,
                    "weight_bytes": r.footprint.weight_bytes,
                    "decode_bytes": r.footprint.decode_bytes,
                    "read_bytes_per_token": r.read_bytes(),
                    "read_gb_per_s": r.read_gb_per_s(),
                    "kv_cache": r.kv.to_json((r.kv_bytes, r.kv_bytes_per_token)),
                    "n_depth": r.depth,
                    "bits_per_weight": r.footprint.bits_per_weight(),
                    "threads": r.threads,
                    "test": r.test,
                    "n_tokens": r.tokens,
                    "tokens_per_second": {
                        "median": r.tps.median, "mean": r.tps.mean, "stddev": r.tps.stddev,
                        "min": r.tps.min, "max": r.tps.max, "samples": r.tps.samples,
                    },
                    "peak_rss_bytes": r.peak_rss,
                    "joules_per_token": r.joules_per_token,
                    "predicted_kl": r.predicted_kl,
                })
            })
            .collect();
        let doc = json!({
            "model": args.model.as_ref().map(|p| p.display().to_string()),
            "checkpoint": file.path.display().to_string(),
            "name": name,
            "kernels": kernel_name,
            "mmap": file.mmap,
            "load_average_1m": { "before": load_before, "after": load_average() },
            "n_prompt": args.n_prompt,
            "n_gen": args.n_gen,
            "n_depth": depth,
            "repetitions": args.repetitions,
            "config": report::config_json(config),
            "power_sensor": meter.as_ref().map(|m| m.sensor_name()),
            "results": results,
        });
        let _ = writeln!(out, "{doc}");
        return Ok(());
    }
    let _ = writeln!(out, "{}", table(&name, kernel_name, &rows));
    if let (Some(b), Some(a)) = (load_before, load_average()) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if b.max(a) > cores as f64 {
            eprintln!(
                "edge-run: note: load average {b:.1} before, {a:.1} after, on {cores} cores: other processes competed for the CPU, multi-threaded rows suffer most"
            );
        }
    }
    Ok(())
}

/// The markdown table, columns aligned as llama-bench prints them.
fn table(name: &str, kernel_name: &str, rows: &[Row]) -> String {
    let header =
        ["model", "view", "bits/w", "weights", "KV", "KV/token", "kernels", "threads", "test", "t/s", "peak RSS", "read/token", "read GB/s", "J/token"];
    let right = [false, false, true, true, false, true, false, true, true, true, true, true, true, true];
    let cells: Vec<[String; 14]> = rows
        .iter()
        .map(|r| {
            [
                name.to_string(),
                r.view.clone(),
                format!("{:.2}", r.footprint.bits_per_weight()),
                format!("{:.2} MiB", r.footprint.weight_bytes as f64 / (1024.0 * 1024.0)),
                r.kv.describe(),
                format!("{:.1} KiB", r.kv_bytes_per_token as f64 / 1024.0),
                kernel_name.to_string(),
                r.threads.to_string(),
                r.test.clone(),
                format!("{:.2} ± {:.2}", r.tps.median, r.tps.stddev),
                r.peak_rss.map_or_else(|| "n/a".into(), |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))),
                format!("{:.2} MiB", r.read_bytes() as f64 / (1024.0 * 1024.0)),
                r.read_gb_per_s().map_or_else(String::new, |g| format!("{g:.2}")),
                r.joules_per_token.map_or_else(String::new, |j| format!("{j:.4}")),
            ]
        })
        .collect();
    // The J/token column only with a power sensor.
    let cols = if rows.iter().any(|r| r.joules_per_token.is_some()) { header.len() } else { header.len() - 1 };
    let widths: Vec<usize> = (0..cols)
        .map(|c| cells.iter().map(|r| r[c].chars().count()).chain([header[c].len()]).max().unwrap_or(0))
        .collect();
    let line = |vals: &[String]| {
        let parts: Vec<String> = vals
            .iter()
            .enumerate()
            .map(|(c, v)| if right[c] { format!("{v:>w$}", w = widths[c]) } else { format!("{v:<w$}", w = widths[c]) })
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    let mut s = line(&header[..cols].iter().map(|h| h.to_string()).collect::<Vec<_>>());
    let rule: Vec<String> = widths
        .iter()
        .zip(&right[..cols])
        .map(|(&w, &r)| if r { format!("{}:", "-".repeat(w + 1)) } else { "-".repeat(w + 2) })
        .collect();
    s.push('\n');
    s.push_str(&format!("|{}|", rule.join("|")));
    for r in &cells {
        s.push('\n');
        s.push_str(&line(&r[..cols]));
    }
    s
}

/// `bench --energy DIR`: energy.json (every row's speed, J/token and predicted KL) and
/// energy.svg (the decode rows: tokens/s against J/token), each written to a temporary name and
/// renamed (the folder was checked before the measurements).
fn write_energy(dir: &std::path::Path, name: &str, rows: &[Row], sensor: String) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let doc = json!({
        "model": name,
        "sensor": sensor,
        "rows": rows.iter().map(|r| json!({
            "view": r.view, "kv": r.kv.describe(), "threads": r.threads, "test": r.test,
            "tokens_per_second": r.tps.median, "joules_per_token": r.joules_per_token,
            "predicted_kl": r.predicted_kl.map(|k| k + budget::kv_kl(r.kv.format)), "bits_per_weight": r.footprint.bits_per_weight(),
        })).collect::<Vec<_>>(),
    });
    edge_pack::writable::write_atomic(&dir.join("energy.json"), format!("{doc:#}\n").as_bytes())?;
    let points: Vec<crate::energy_plot::Point> = rows
        .iter()
        .filter(|r| r.test.starts_with("tg"))
        .filter_map(|r| {
            let kl = r.predicted_kl.map(|k| format!(", KL {:.3}", k + budget::kv_kl(r.kv.format))).unwrap_or_default();
            Some(crate::energy_plot::Point {
                label: format!("{}, KV {}{kl}", r.view, r.kv.describe()),
                tokens_per_second: r.tps.median,
                joules_per_token: r.joules_per_token?,
            })
        })
        .collect();
    crate::energy_plot::write_svg(&dir.join("energy.svg"), &format!("{name}: decode speed and energy ({sensor})"), &points)?;
    eprintln!("edge-run: wrote {} and {}", dir.join("energy.json").display(), dir.join("energy.svg").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fixed_and_in_range() {
        let a = bench_tokens(100, 512);
        assert_eq!(a, bench_tokens(100, 512));
        assert!(a.iter().all(|&t| t < 512));
        assert!(a.iter().collect::<std::collections::BTreeSet<_>>().len() > 50);
    }
}
