//! `edge-run eval`: perplexity of a model on a text file and, with `--kl-base`, its KL
//! divergence from a base model (the protocol is in `perplexity.rs`); `--sweep` is `sweep.rs`.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::budget;
use crate::cli::EvalArgs;
use crate::perplexity::{corpus_tokenizer, same_vocab, score_window, window_model, Corpus, Scores};
use crate::progress::progress_bar;
use crate::session::{self, KvSettings, Loaded};
use crate::stats;
use crate::views;

pub fn run(args: &EvalArgs) -> Result<()> {
    // Written after the whole sequence ran: a place that cannot take it fails now.
    if let Some(out) = &args.logits_out {
        edge_pack::writable::check_file(out, "--logits-out")?;
    }
    let quiet = args.json;
    let file = session::open(&args.model)?;
    let ctx = args.ctx;
    let mut batch = args.batch.unwrap_or(512).min(ctx);
    let mut kv = KvSettings::from_args(&args.kv, ctx)?;
    let mut chosen = None;
    let main = match args.budget {
        None => Loaded::new(&file, &args.model)?,
        Some(bytes) => Loaded::with(&file, |ck, arch, config| {
            let kv_bits = (!args.kv.kv_bits.is_empty()).then_some(kv.format);
            let req = budget::Request { bytes, ctx: Some(ctx), kv: kv_bits, batch, default_ctx: ctx };
            let c = budget::select(ck, arch, config, &file.path, "--budget", req)?;
            let selection = c.selection.clone();
            chosen = Some(c);
            Ok(selection)
        })?,
    };
    if let Some(c) = &chosen {
        batch = c.budget.shape.batch;
        kv = KvSettings { format: c.budget.shape.kv, window: None };
    }
    if args.logits_out.is_none() {
        crate::perplexity::check_ctx(&main, ctx)?;
    }
    let mut tok = corpus_tokenizer(&main.ck, main.path(), args.token_ids)?;
    if let Some(out) = &args.logits_out {
        return crate::logits_out::run(args, &main, tok.as_mut(), batch, kv, out);
    }
    let base_file = match &args.kl_base {
        Some(p) => Some(session::open_other(p, &args.model)?),
        None => None,
    };
    let base = match &base_file {
        Some(f) => Some(Loaded::with(f, |ck, _, _| views::select_uniform(ck, &f.path, "--kl-base-bits", args.kl_base_bits))?),
        None => None,
    };

    let corpus = Corpus::new(tok.as_mut(), &args.data, ctx, args.chunks, main.config.vocab_size, quiet)?;
    let n_windows = corpus.n_windows;

    let mut model = window_model(&main, ctx, batch, kv)?;
    let kv_bytes = model.kv_bytes();
    let mut base_model = match &base {
        Some(b) => {
            let m = window_model(b, ctx, batch, KvSettings::default())?;
            same_vocab("--kl-base", &b.config, &main.config)?;
            Some(m)
        }
        None => None,
    };
    corpus.check_vocab(main.config.vocab_size)?;
    let selection = &main.selection;

    if !quiet {
        eprintln!("{}", corpus.describe(&args.data));
        if let Some(c) = &chosen {
            for line in c.budget.describe(main.footprint.weight_bytes, main.footprint.bits_per_weight(), selection.predicted_kl) {
                eprintln!("{line}");
            }
        }
        if !selection.is_default() {
            eprintln!("{}", selection.describe(&main.footprint));
        }
        if kv != KvSettings::default() {
            eprintln!(
                "edge-run: KV cache {}: {} ({} per token){}",
                kv.describe(),
                stats::human_bytes(kv_bytes.0 as u64),
                stats::human_bytes(kv_bytes.1 as u64),
                if base.is_some() { "; the base keeps f16 and every position" } else { "" }
            );
        }
    }

    let (pb, tty) = progress_bar(n_windows as u64, "windows");
    let mut scores = Scores::default();
    let mut base_scores = Scores::default();
    let mut base_rows: Vec<f32> = Vec::new();
    let mut window_ppl = Vec::with_capacity(n_windows);
    // The model's stored planes are checked beside the windows (not the base's: a reference).
    let mut verifier = (!args.model.no_verify).then(|| crate::verify::Verifier::start(&file.path, &main.ck, &main.selection.plan, false));
    let meter = crate::energy::meter(args.power_sensor.as_deref(), None, false)?;
    let mut joules = 0.0;
    let t0 = Instant::now();
    let mut window = vec![0u32; ctx];
    for w in 0..n_windows {
        corpus.window(w, &mut window);
        if let Some(b) = base_model.as_mut() {
            score_window(b, &corpus, &window, batch, None, &mut base_scores, Some(&mut base_rows))?;
        }
        let base_logits = base.as_ref().map(|_| base_rows.as_slice());
        let j0 = meter.as_ref().map(|m| m.joules());
        if let Some(v) = &verifier {
            v.poll()?;
        }
        if let Err(e) = score_window(&mut model, &corpus, &window, batch, base_logits, &mut scores, None) {
            return Err(match verifier.as_mut() {
                Some(v) => v.explain(e),
                None => e,
            });
        }
        if let (Some(m), Some(j0)) = (&meter, j0) {
            joules += m.joules() - j0;
        }
        let (p, _) = scores.nll.ppl();
        window_ppl.push(p);
        let msg = match &base {
            Some(_) => format!("PPL {p:.4}  KL {:.6}", scores.kl.mean()),
            None => format!("PPL {p:.4}"),
        };
        pb.set_message(msg.clone());
        pb.inc(1);
        if !tty && !quiet {
            eprintln!("edge-run: [{}/{n_windows}] {msg}", w + 1);
        }
    }
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    let verified = verifier.map(crate::verify::Verifier::finish).transpose()?;
    let processed = n_windows * ctx * if base.is_some() { 2 } else { 1 };
    let scored = scores.nll.count();
    let (ppl, ppl_se) = scores.nll.ppl();
    let peak = stats::peak_rss_bytes();
    let (agree_p, agree_se) = scores.agreement();
    let kl = &scores.kl;
    let weight_bytes = main.footprint.weight_bytes;

    if args.json {
        let kl_obj = base.as_ref().map(|bf| {
            let (bp, bse) = base_scores.nll.ppl();
            json!({
                "base": args.kl_base.as_ref().map(|p| p.display().to_string()),
                "base_checkpoint": bf.path().display().to_string(),
                "base_bits": args.kl_base_bits,
                "base_ppl": bp,
                "base_ppl_stderr": bse,
                "mean_kl": kl.mean(),
                "kl_stderr": kl.stderr(),
                "max_kl": kl.max(),
                "top1_agreement_percent": 100.0 * agree_p,
                "top1_agreement_stderr_percent": 100.0 * agree_se,
                "ln_ppl_ratio": scores.nll.mean() - base_scores.nll.mean(),
            })
        });
        let obj = json!({
            "model": args.model.model.as_ref().map(|p| p.display().to_string()),
            "checkpoint": file.path.display().to_string(),
            "packed": file.origin.name(),
            "data": args.data.display().to_string(),
            "ctx": ctx,
            "batch_size": batch,
            "bits": args.model.bits,
            "plan": selection.to_json(&main.footprint),
            "budget": chosen.as_ref().map(|c| {
                let mut j = c.budget.to_json(main.footprint.weight_bytes);
                j["plan_ms"] = json!(c.plan_ms);
                j
            }),
            "add_bos": corpus.add_bos,
            "n_tokens": corpus.tokens.len(),
            "windows": n_windows,
            "windows_available": corpus.available,
            "tokens_scored": scored,
            "mean_nll": scores.nll.mean(),
            "ppl": ppl,
            "ppl_stderr": ppl_se,
            "verified": verified.map(crate::verify::Summary::to_json),
            "ece": scores.calib.ece(),
            "ece_bins": crate::perplexity::ECE_BINS,
            "mean_top1_probability": scores.calib.confidence_accuracy().0,
            "top1_accuracy": scores.calib.confidence_accuracy().1,
            "window_ppl": window_ppl,
            "seconds": seconds,
            "tokenize_seconds": corpus.tokenize_seconds,
            "tokens_per_second": stats::rate(processed, seconds),
            "scored_tokens_per_second": stats::rate(scored as usize, seconds),
            "peak_rss_bytes": peak,
            "weight_bytes": weight_bytes,
            "decode_bytes": main.footprint.decode_bytes,
            "bits_per_weight": main.footprint.bits_per_weight(),
            "kv_cache": kv.to_json(kv_bytes),
            "kl": kl_obj,
            // The evaluated model's passes only (not the --kl-base model's).
            "energy": meter.as_ref().map(|m| json!({
                "sensor": m.sensor_name(),
                "joules": joules,
                "joules_per_token": joules / (n_windows * ctx).max(1) as f64,
            })),
        });
        let _ = writeln!(std::io::stdout().lock(), "{obj}");
        return Ok(());
    }

    let mut out = std::io::stdout().lock();
    let windows = if n_windows == 1 { "window" } else { "windows" };
    let (conf, acc) = scores.calib.confidence_accuracy();
    let mut lines = vec![
        format!("PPL = {ppl:.4} +/- {ppl_se:.5}  ({scored} tokens scored in {n_windows} {windows} of {ctx})"),
        format!(
            "ECE = {:.4}  (top-1 next-token probability, {} bins: mean {conf:.4}, accuracy {acc:.4})",
            scores.calib.ece(),
            crate::perplexity::ECE_BINS
        ),
    ];
    if let Some(bf) = &base {
        let (bp, bse) = base_scores.nll.ppl();
        lines.push(format!("base PPL = {bp:.4} +/- {bse:.5}  ({})", bf.path().display()));
        lines.push(format!("Mean KL(base || model) = {:.6} +/- {:.6}  (max {:.6})", kl.mean(), kl.stderr(), kl.max()));
        lines.push(format!("Same top-1 = {:.3} +/- {:.3} %", 100.0 * agree_p, 100.0 * agree_se));
    }
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    eprintln!(
        "edge-run: {seconds:.2} s, {} ({processed} tokens through the model{}); peak RSS {}; weights {}; KV cache {} ({}, {} per token)",
        stats::fmt_rate(stats::rate(processed, seconds)),
        if base.is_some() { " and the base" } else { "" },
        peak.map(stats::human_bytes).unwrap_or_else(|| "n/a".into()),
        stats::human_bytes(weight_bytes),
        stats::human_bytes(kv_bytes.0 as u64),
        kv.describe(),
        stats::human_bytes(kv_bytes.1 as u64),
    );
    if let Some(m) = &meter {
        eprintln!(
            "edge-run: energy ({}): {joules:.3} J for the evaluated model's {} tokens, {:.4} J/token",
            m.sensor_name(),
            n_windows * ctx,
            joules / (n_windows * ctx).max(1) as f64
        );
    }
    Ok(())
}
