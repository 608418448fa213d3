//! `edge-run eval --sweep`: the degradation curve of one checkpoint. On the same windows, the
//! base model (`--kl-base`), the uniform 8/6/5/4/3/2-bit views of `--model` (one model instance,
//! its views switched live), every `--baselines` file and the plans the sensitivity profile
//! picks for each `--budgets` value are scored against the base's logits, which are computed
//! once per window. Output: a table, `sweep.json`, `sweep.svg`, and the compressibility score.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Result};
use edge_runtime::plan::{Footprint, ViewPlan};
use edge_runtime::{Checkpoint, Model};
use serde_json::json;

use crate::cli::EvalArgs;
use crate::loader::ModelFile;
use crate::perplexity::{self, Corpus, Scores};
use crate::plot::{self, PlotData, Point};
use crate::profile::Baseline;
use crate::progress::progress_bar;
use crate::report::one_line;
use crate::session::{self, KvSettings, Loaded};
use crate::stats::{self, human_bytes};
use crate::views::{self, Selection};

/// The uniform views the sweep evaluates, widest first.
const UNIFORM: [u8; 6] = [8, 6, 5, 4, 3, 2];
/// The uniform views the compressibility score is taken over (the same four since the score
/// was defined, so that scores of older and newer checkpoints compare).
const SCORE_VIEWS: [u8; 4] = [2, 3, 4, 8];

/// How the compressibility score is defined (also in `edge-run eval --help` and sweep.json).
pub const SCORE_DEFINITION: &str = "area under exp(-KL) of the uniform 8/4/3/2-bit views against the view width in bits, piecewise linear through b = 2, 3, 4, 8 (trapezoid rule), over [2, 8], divided by 6; KL = mean KL(P_base || P_view) in nats/token; 1 = every view indistinguishable from the base";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Base,
    Uniform(u8),
    Plan(f64),
    /// A plan for a weight-byte budget.
    PlanBytes(u64),
    Baseline(usize),
    /// The uniform view of bits `.1` of `--compare` checkpoint `.0`.
    Compare(usize, u8),
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Base => "base",
            Kind::Uniform(_) => "uniform",
            Kind::Plan(_) | Kind::PlanBytes(_) => "plan",
            Kind::Baseline(_) => "baseline",
            Kind::Compare(..) => "compare",
        }
    }
}

/// One configuration of the sweep.
struct Row {
    label: String,
    kind: Kind,
    checkpoint: PathBuf,
    /// The views of `--model` (uniform and plan rows).
    plan: Option<ViewPlan>,
    units: Vec<(String, u8)>,
    predicted_kl: Option<f64>,
    weight_bytes: u64,
    /// Weight bytes one decoded token reads; `None` for baselines (stored dense, so their own
    /// footprint is not the format they stand for).
    decode_bytes: Option<u64>,
    bits_per_weight: f64,
    scores: Scores,
}

impl Row {
    /// A row of `checkpoint` read under `plan`, whose footprint is `fp`.
    fn of_plan(label: String, kind: Kind, checkpoint: &Path, plan: ViewPlan, fp: &Footprint) -> Row {
        Row {
            label,
            kind,
            checkpoint: checkpoint.to_path_buf(),
            plan: Some(plan),
            units: Vec::new(),
            predicted_kl: None,
            weight_bytes: fp.weight_bytes,
            decode_bytes: Some(fp.decode_bytes),
            bits_per_weight: fp.bits_per_weight(),
            scores: Scores::default(),
        }
    }

    fn kl(&self) -> f64 {
        if self.kind == Kind::Base {
            0.0
        } else {
            self.scores.kl.mean()
        }
    }
    fn agreement(&self) -> f64 {
        if self.kind == Kind::Base {
            1.0
        } else {
            self.scores.agreement().0
        }
    }
}

/// Normalised area under `points` (x ascending) over `[lo, hi]`, trapezoid rule. `None` unless
/// the points span `[lo, hi]`.
pub fn area(points: &[(f64, f64)], lo: f64, hi: f64) -> Option<f64> {
    let mut p: Vec<(f64, f64)> = points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    let first = p.first()?;
    let last = p.last()?;
    if first.0 > lo || last.0 < hi || hi <= lo {
        return None;
    }
    let a: f64 = p
        .windows(2)
        .map(|w| {
            let (x0, y0) = w[0];
            let (x1, y1) = w[1];
            // Clip each segment to [lo, hi].
            let (a, b) = (x0.max(lo), x1.min(hi));
            if b <= a {
                return 0.0;
            }
            let at = |x: f64| y0 + (y1 - y0) * (x - x0) / (x1 - x0);
            0.5 * (at(a) + at(b)) * (b - a)
        })
        .sum();
    Some(a / (hi - lo))
}

/// A model whose views the sweep switches live, and the plan it holds now.
struct Switching<'f> {
    model: Model<'f>,
    holds: Option<ViewPlan>,
}

impl<'f> Switching<'f> {
    fn new(l: &Loaded<'f>, ctx: usize, batch: usize, kv: KvSettings) -> Result<Self> {
        Ok(Switching { model: perplexity::window_model(l, ctx, batch, kv)?, holds: Some(l.selection.plan.clone()) })
    }

    /// The model read under `plan` (`l` is the checkpoint it was made from).
    fn at(&mut self, l: &Loaded<'f>, plan: &ViewPlan) -> Result<&mut Model<'f>> {
        if self.holds.as_ref() != Some(plan) {
            self.model.set_views(&l.ck, plan).map_err(|e| anyhow!("{}: {e}", l.path().display()))?;
            self.holds = Some(plan.clone());
        }
        Ok(&mut self.model)
    }
}

/// A checkpoint's file name without its extension: its rows' and plot line's label.
fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

fn encoding_label(ck: &Checkpoint<'_>) -> &'static str {
    ck.tensor("token_embd.weight").map(|t| t.encoding.name()).unwrap_or("?")
}

pub fn run(args: &EvalArgs) -> Result<()> {
    // The files go in at the end, after minutes of windows: a folder that cannot take them
    // fails now.
    edge_pack::writable::check_dir(&args.out, &["sweep.json", "sweep.svg"], "--out")?;
    let quiet = args.json;
    let base_path = args.kl_base.as_ref().ok_or_else(|| anyhow!("--sweep needs --kl-base (the full-precision model)"))?;
    let file = session::open(&args.model)?;
    // The model starts at its 8-bit views; each row switches them live.
    let main = Loaded::with(&file, |ck, _, _| {
        views::require_nested(ck, &file.path, "--sweep")?;
        Ok(Selection::uniform(Some(8)))
    })?;
    let (ck, config) = (&main.ck, &main.config);
    let mut tok = perplexity::corpus_tokenizer(ck, &file.path, args.token_ids)?;
    let ctx = args.ctx;
    perplexity::check_ctx(&main, ctx)?;
    let batch = args.batch.unwrap_or(512).min(ctx);
    // The KV flags apply to the compared models; the base keeps f16 and every position.
    let kv = KvSettings::from_args(&args.kv, ctx)?;
    let base_file = session::open_other(base_path, &args.model)?;
    let base = Loaded::with(&base_file, |ck, _, _| {
        views::select_uniform(ck, &base_file.path, "--kl-base-bits", args.kl_base_bits)
    })?;
    let baseline_files: Vec<ModelFile> = args
        .baselines
        .iter()
        .map(|p| session::open_other(p, &args.model))
        .collect::<Result<_>>()?;
    let baseline_loads: Vec<Loaded<'_>> =
        baseline_files.iter().map(|f| Loaded::with(f, |_, _, _| Ok(Selection::uniform(None)))).collect::<Result<_>>()?;
    let compare_files: Vec<ModelFile> =
        args.compare.iter().map(|p| session::open_other(p, &args.model)).collect::<Result<_>>()?;
    let compare_loads: Vec<Loaded<'_>> = compare_files
        .iter()
        .map(|f| {
            Loaded::with(f, |ck, _, _| {
                views::require_nested(ck, &f.path, "--compare")?;
                Ok(Selection::uniform(Some(8)))
            })
        })
        .collect::<Result<_>>()?;

    let corpus = Corpus::new(tok.as_mut(), &args.data, ctx, args.chunks, config.vocab_size, quiet)?;
    corpus.check_vocab(config.vocab_size)?;

    // The configurations.
    let mut notes: Vec<String> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut base_model = perplexity::window_model(&base, ctx, batch, KvSettings::default())?;
    perplexity::same_vocab("--kl-base", &base.config, config)?;
    let base_label = match args.kl_base_bits {
        Some(b) => format!("base ({} @{b})", encoding_label(&base.ck)),
        None => format!("base ({})", encoding_label(&base.ck)),
    };
    rows.push(Row {
        label: base_label,
        kind: Kind::Base,
        checkpoint: base_file.path.clone(),
        plan: None,
        units: Vec::new(),
        predicted_kl: None,
        weight_bytes: base.footprint.weight_bytes,
        decode_bytes: Some(base.footprint.decode_bytes),
        bits_per_weight: base.footprint.bits_per_weight(),
        scores: Scores::default(),
    });
    for b in UNIFORM {
        let plan = ViewPlan::uniform(b);
        let fp = main.footprint_of(&plan)?;
        rows.push(Row::of_plan(format!("uniform {b}-bit"), Kind::Uniform(b), &file.path, plan, &fp));
    }
    let planner = views::profile_planner(ck, main.arch, config, &file.path)?;
    match &planner {
        None => notes.push(format!(
            "{} has no sensitivity profile, so the sweep has no plans (re-pack with `edge-pack --calibrate`)",
            file.path.display()
        )),
        Some(planner) => {
            // One row per budget: average bits (--budgets), then weight bytes (--byte-budgets).
            let mut budgets = args.budgets.clone();
            budgets.sort_by(|a, b| b.total_cmp(a));
            budgets.dedup();
            let mut byte_budgets = args.byte_budgets.clone();
            byte_budgets.sort_unstable_by(|a, b| b.cmp(a));
            byte_budgets.dedup();
            let wanted = budgets
                .into_iter()
                .map(|t| (format!("plan {t} bits"), Kind::Plan(t), views::for_bits(planner, t), format!("budget {t}")))
                .chain(byte_budgets.into_iter().map(|b| {
                    (format!("plan <= {}", human_bytes(b)), Kind::PlanBytes(b), views::for_bytes(planner, b), format!("byte budget {b}"))
                }));
            for (label, kind, chosen, what) in wanted {
                match chosen {
                    Ok(chosen) => {
                        let plan = chosen.view_plan(&planner.units);
                        let fp = main.footprint_of(&plan)?;
                        rows.push(Row {
                            units: planner.units.iter().zip(&chosen.bits).map(|(u, &b)| (u.name.clone(), b)).collect(),
                            predicted_kl: Some(chosen.kl),
                            ..Row::of_plan(label, kind, &file.path, plan, &fp)
                        });
                    }
                    Err(e) => notes.push(format!("{what} skipped: {}", one_line(&format!("{e:#}")))),
                }
            }
        }
    }
    let mut baselines = Vec::with_capacity(baseline_loads.len());
    for (i, l) in baseline_loads.iter().enumerate() {
        let f = l.file;
        let model = perplexity::window_model(l, ctx, batch, kv)?;
        perplexity::same_vocab(&format!("baseline {}", f.path.display()), &l.config, config)?;
        let meta = Baseline::from_checkpoint(&l.ck).map_err(|e| anyhow!("{}: {e}", f.path.display()))?;
        let (label, weight_bytes) = match &meta {
            Some(m) => (m.label(), m.weight_bytes),
            None => {
                notes.push(format!(
                    "{} records no baseline (edge.baseline): its weight bytes are its own size",
                    f.path.display()
                ));
                (stem(&f.path), l.footprint.weight_bytes)
            }
        };
        let bits_per_weight = l.footprint.bits_for(weight_bytes.saturating_sub(l.footprint.weight_bytes - l.footprint.matrix_bytes));
        rows.push(Row {
            label,
            kind: Kind::Baseline(i),
            checkpoint: f.path.clone(),
            plan: None,
            units: Vec::new(),
            predicted_kl: None,
            weight_bytes,
            decode_bytes: None,
            bits_per_weight,
            scores: Scores::default(),
        });
        baselines.push(model);
    }

    // Every --compare checkpoint at every uniform view, each with the view it holds now.
    let mut compares = Vec::with_capacity(compare_loads.len());
    for (i, l) in compare_loads.iter().enumerate() {
        perplexity::same_vocab(&format!("--compare {}", l.file.path.display()), &l.config, config)?;
        for b in UNIFORM {
            let (plan, label) = (ViewPlan::uniform(b), format!("{} {b}-bit", stem(&l.file.path)));
            let fp = l.footprint_of(&plan)?;
            rows.push(Row::of_plan(label, Kind::Compare(i, b), &l.file.path, plan, &fp));
        }
        compares.push(Switching::new(l, ctx, batch, kv)?);
    }

    let mut main_model = Switching::new(&main, ctx, batch, kv)?;
    let kv_bytes = main_model.model.kv_bytes();

    if !quiet {
        eprintln!("{}", corpus.describe(&args.data));
        eprintln!(
            "edge-run: sweep of {} configurations ({} + the base), each scored against the base's logits",
            rows.len() - 1,
            rows.iter().skip(1).map(|r| r.label.as_str()).collect::<Vec<_>>().join(", ")
        );
        for n in &notes {
            eprintln!("edge-run: note: {n}");
        }
    }

    let n_windows = corpus.n_windows;
    let (pb, tty) = progress_bar((n_windows * rows.len()) as u64, "passes");
    let t0 = Instant::now();
    let mut window = vec![0u32; ctx];
    let mut base_rows: Vec<f32> = Vec::new();
    for w in 0..n_windows {
        corpus.window(w, &mut window);
        for r in rows.iter_mut() {
            pb.set_message(format!("window {}/{n_windows}: {}", w + 1, r.label));
            match r.kind {
                Kind::Base => {
                    perplexity::score_window(&mut base_model, &corpus, &window, batch, None, &mut r.scores, Some(&mut base_rows))?
                }
                Kind::Uniform(_) | Kind::Plan(_) | Kind::PlanBytes(_) | Kind::Compare(..) => {
                    let plan = r.plan.as_ref().expect("a view plan");
                    let model = match r.kind {
                        Kind::Compare(i, _) => compares[i].at(&compare_loads[i], plan)?,
                        _ => main_model.at(&main, plan)?,
                    };
                    perplexity::score_window(model, &corpus, &window, batch, Some(&base_rows), &mut r.scores, None)?
                }
                Kind::Baseline(i) => perplexity::score_window(
                    &mut baselines[i],
                    &corpus,
                    &window,
                    batch,
                    Some(&base_rows),
                    &mut r.scores,
                    None,
                )?,
            }
            pb.inc(1);
        }
        if !tty && !quiet {
            eprintln!("edge-run: [{}/{n_windows}] windows through all {} configurations", w + 1, rows.len());
        }
    }
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();

    // The compressibility score, of --model (`None`) and of each --compare checkpoint.
    let uniform_points = |which: Option<usize>, q: fn(&Row) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| match (r.kind, which) {
                (Kind::Uniform(b), None) if SCORE_VIEWS.contains(&b) => Some((b as f64, q(r))),
                (Kind::Compare(i, b), Some(j)) if i == j && SCORE_VIEWS.contains(&b) => Some((b as f64, q(r))),
                _ => None,
            })
            .collect()
    };
    let exp_kl = uniform_points(None, |r| (-r.kl()).exp());
    let top1 = uniform_points(None, |r| r.agreement());
    let score = area(&exp_kl, 2.0, 8.0);
    let top1_auc = area(&top1, 2.0, 8.0);
    let compare_scores: Vec<(f64, f64)> = (0..compare_loads.len())
        .map(|i| {
            let a = |q| area(&uniform_points(Some(i), q), 2.0, 8.0).unwrap_or(f64::NAN);
            (a(|r| (-r.kl()).exp()), a(|r| r.agreement()))
        })
        .collect();

    // Files.
    std::fs::create_dir_all(&args.out).map_err(|e| anyhow!("cannot create --out folder {}: {e}", args.out.display()))?;
    let json_path = args.out.join("sweep.json");
    let svg_path = args.out.join("sweep.svg");
    let row_json = |r: &Row| {
        let (ppl, ppl_se) = r.scores.nll.ppl();
        let (agree, agree_se) = (r.agreement(), if r.kind == Kind::Base { 0.0 } else { r.scores.agreement().1 });
        json!({
            "config": r.label,
            "kind": r.kind.name(),
            "bits": match r.kind { Kind::Uniform(b) | Kind::Compare(_, b) => Some(b), _ => None },
            "target_bits": match r.kind { Kind::Plan(t) => Some(t), _ => None },
            "byte_budget": match r.kind { Kind::PlanBytes(b) => Some(b), _ => None },
            "checkpoint": r.checkpoint.display().to_string(),
            "weight_bytes": r.weight_bytes,
            "decode_bytes": r.decode_bytes,
            "bits_per_weight": r.bits_per_weight,
            "ppl": ppl,
            "ppl_stderr": ppl_se,
            "mean_kl": r.kl(),
            "kl_stderr": if r.kind == Kind::Base { 0.0 } else { r.scores.kl.stderr() },
            "max_kl": if r.kind == Kind::Base { 0.0 } else { r.scores.kl.max() },
            "ece": r.scores.calib.ece(),
            "top1_agreement_percent": 100.0 * agree,
            "top1_agreement_stderr_percent": 100.0 * agree_se,
            "predicted_kl": r.predicted_kl,
            "views": if r.units.is_empty() { serde_json::Value::Null } else {
                r.units.iter().map(|(k, b)| (k.clone(), json!(b))).collect::<serde_json::Map<_, _>>().into()
            },
        })
    };
    let obj = json!({
        "model": args.model.model.as_ref().map(|p| p.display().to_string()),
        "checkpoint": file.path.display().to_string(),
        "base": base.path().display().to_string(),
        "data": args.data.display().to_string(),
        "ctx": ctx,
        "kv_cache": kv.to_json(kv_bytes),
        "batch_size": batch,
        "windows": n_windows,
        "windows_available": corpus.available,
        "tokens_scored": rows[0].scores.nll.count(),
        "profile": planner.is_some(),
        "budgets": args.budgets,
        "byte_budgets": args.byte_budgets,
        "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
        "compressibility": {
            "score": score,
            "top1_auc": top1_auc,
            "exp_neg_kl": exp_kl,
            "top1_agreement": top1,
            "definition": SCORE_DEFINITION,
        },
        "compare": compare_loads.iter().zip(&compare_scores).map(|(l, (s, t))| json!({
            "checkpoint": l.file.path.display().to_string(),
            "compressibility": { "score": s, "top1_auc": t },
        })).collect::<Vec<_>>(),
        "notes": notes,
        "seconds": seconds,
        "peak_rss_bytes": stats::peak_rss_bytes(),
        "files": { "json": json_path.display().to_string(), "plot": svg_path.display().to_string() },
    });
    edge_pack::writable::write_atomic(&json_path, format!("{obj:#}\n").as_bytes())?;

    let to_point = |r: &Row, label: String| Point {
        label,
        mib: r.weight_bytes as f64 / (1024.0 * 1024.0),
        ppl: r.scores.nll.ppl().0,
        kl: r.kl(),
    };
    let mut data = PlotData {
        uniform_label: if compare_loads.is_empty() {
            "uniform views (8/6/5/4/3/2 bits)".into()
        } else {
            format!("{}: uniform views", stem(&file.path))
        },
        compare: compare_loads.iter().map(|l| (format!("{}: uniform views", stem(&l.file.path)), Vec::new())).collect(),
        title: format!(
            "{}: degradation sweep ({n_windows} {} of {ctx} tokens, {}; compressibility {})",
            ck.get_str(edge_runtime::format::keys::NAME).unwrap_or("model"),
            if n_windows == 1 { "window" } else { "windows" },
            args.data.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            score.map(|s| format!("{s:.3}")).unwrap_or_else(|| "n/a".into())
        ),
        ..Default::default()
    };
    for r in &rows {
        match r.kind {
            Kind::Base => data.base = Some(to_point(r, r.label.clone())),
            Kind::Uniform(b) => data.uniform.push(to_point(r, format!("{b}-bit"))),
            Kind::Plan(t) => data.plans.push(to_point(r, format!("{t}"))),
            Kind::PlanBytes(b) => data.plans.push(to_point(r, human_bytes(b))),
            Kind::Baseline(_) => data.baselines.push(to_point(r, r.label.clone())),
            Kind::Compare(i, b) => data.compare[i].1.push(to_point(r, format!("{b}-bit"))),
        }
    }
    plot::write_svg(&svg_path, &data)?;

    if args.json {
        let _ = writeln!(std::io::stdout().lock(), "{obj}");
        return Ok(());
    }
    let mut out = String::new();
    let lw = rows.iter().map(|r| r.label.len()).max().unwrap_or(6).max(6);
    out.push_str(&format!(
        "{:<lw$}  {:>14}  {:>11}  {:>7}  {:>12}  {:>10}  {:>8}  {:>7}\n",
        "config", "weight bytes", "", "bits/w", "PPL", "KL", "top-1 %", "ECE"
    ));
    for r in &rows {
        let (ppl, _) = r.scores.nll.ppl();
        out.push_str(&format!(
            "{:<lw$}  {:>14}  {:>11}  {:>7.3}  {:>12.4}  {:>10.6}  {:>8.2}  {:>7.4}\n",
            r.label,
            r.weight_bytes,
            human_bytes(r.weight_bytes),
            r.bits_per_weight,
            ppl,
            r.kl(),
            100.0 * r.agreement(),
            r.scores.calib.ece()
        ));
    }
    out.push_str(&format!(
        "compressibility score = {}  (area under exp(-KL) vs view bits over [2, 8], uniform views; top-1 area {})\n",
        score.map(|s| format!("{s:.4}")).unwrap_or_else(|| "n/a".into()),
        top1_auc.map(|s| format!("{s:.4}")).unwrap_or_else(|| "n/a".into()),
    ));
    for (l, (s, t)) in compare_loads.iter().zip(&compare_scores) {
        out.push_str(&format!("compressibility score of {} = {s:.4}  (top-1 area {t:.4})\n", l.file.path.display()));
    }
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    eprintln!(
        "edge-run: sweep took {seconds:.1} s ({n_windows} {} x {} configurations); wrote {} and {}",
        if n_windows == 1 { "window" } else { "windows" },
        rows.len(),
        json_path.display(),
        svg_path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_is_normalised_trapezoid() {
        let perfect = [(2.0, 1.0), (3.0, 1.0), (4.0, 1.0), (8.0, 1.0)];
        assert!((area(&perfect, 2.0, 8.0).unwrap() - 1.0).abs() < 1e-12);
        // Useless 2 and 3 bits, perfect 4 and 8: (0 + 0.5 + 4) / 6.
        let low = [(8.0, 1.0), (2.0, 0.0), (3.0, 0.0), (4.0, 1.0)];
        assert!((area(&low, 2.0, 8.0).unwrap() - 0.75).abs() < 1e-12);
        // A straight line from 0 to 1.
        assert!((area(&[(2.0, 0.0), (8.0, 1.0)], 2.0, 8.0).unwrap() - 0.5).abs() < 1e-12);
        // Must span the interval.
        assert_eq!(area(&[(3.0, 1.0), (8.0, 1.0)], 2.0, 8.0), None);
        assert_eq!(area(&[], 2.0, 8.0), None);
    }
}
