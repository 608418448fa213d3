//! `edge-run eval`: perplexity exactly as llama.cpp's `llama-perplexity` computes it, and KL
//! divergence against a base model (as `llama-perplexity --kl-divergence`).
//!
//! Protocol: the file is read as is and tokenized whole (BOS first only if the model adds one).
//! It is cut into non-overlapping windows of `ctx` tokens (only full windows); each runs from
//! position 0 (with BOS replacing its first token when the model adds BOS), and the positions
//! `j` in `[ctx/2, ctx-1)` are scored: the NLL of token `j+1` under `softmax(logits[j])`, in f64.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use edge_runtime::model::{Logits, ModelOptions};
use edge_runtime::{Config, Model};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::cli::EvalArgs;
use crate::loader::{self, Tok};
use crate::stats;

/// Log-sum-exp of `logits` in f64.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln()
}

/// `-log softmax(logits)[target]`, in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    log_sum_exp(logits) - logits[target as usize] as f64
}

/// `KL(P_base || P_model) = sum_i p_base_i (log p_base_i - log p_model_i)`, in f64.
pub fn kl_divergence(base: &[f32], model: &[f32]) -> f64 {
    let lb = log_sum_exp(base);
    let lm = log_sum_exp(model);
    base.iter()
        .zip(model)
        .map(|(&b, &m)| {
            let log_pb = b as f64 - lb;
            let log_pm = m as f64 - lm;
            log_pb.exp() * (log_pb - log_pm)
        })
        .sum::<f64>()
        .max(0.0)
}

/// Running mean of a per-token quantity with its standard error (as llama.cpp reports it).
#[derive(Debug, Default, Clone, Copy)]
pub struct Mean {
    sum: f64,
    sum2: f64,
    n: u64,
    max: f64,
}

impl Mean {
    pub fn add(&mut self, v: f64) {
        self.sum += v;
        self.sum2 += v * v;
        self.n += 1;
        self.max = self.max.max(v);
    }
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.sum / self.n as f64
        }
    }
    /// Standard error of the mean: `sqrt(var / (n - 1))`.
    pub fn stderr(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let m = self.mean();
        let var = self.sum2 / self.n as f64 - m * m;
        if var > 0.0 {
            (var / (self.n - 1) as f64).sqrt()
        } else {
            0.0
        }
    }
    /// Perplexity `exp(mean NLL)` and its standard error `ppl * stderr(NLL)`.
    pub fn ppl(&self) -> (f64, f64) {
        let p = self.mean().exp();
        (p, p * self.stderr())
    }
}

struct Loaded<'f> {
    file: &'f loader::ModelFile,
    model: Model<'f>,
    config: Config,
    weight_bytes: usize,
}

fn load<'f>(
    file: &'f loader::ModelFile,
    ck: &edge_runtime::Checkpoint<'f>,
    ctx: usize,
    batch: usize,
    bits: Option<u8>,
) -> Result<Loaded<'f>> {
    let config = Config::from_checkpoint(ck).map_err(|e| anyhow!("{}: {e}", file.path.display()))?;
    if ctx > config.max_seq_len {
        bail!(
            "--ctx {ctx} exceeds the trained context of {} ({} tokens); use a smaller --ctx",
            file.path.display(),
            config.max_seq_len
        );
    }
    let opts = ModelOptions { max_seq_len: ctx, max_batch: batch, view_bits: bits };
    let model = Model::new(ck, opts).map_err(|e| anyhow!("{}: {e}", file.path.display()))?;
    let weight_bytes = model.weights.view_bytes(config.tied_embeddings);
    Ok(Loaded { file, model, config, weight_bytes })
}

fn read_text(path: &Path, quiet: bool) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("cannot read data file {}: {e}", path.display()))?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            if !quiet {
                eprintln!(
                    "edge-run: warning: {} is not valid UTF-8; invalid bytes are replaced by U+FFFD",
                    path.display()
                );
            }
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }
    })
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let quiet = args.json;
    let file = loader::open_model(&args.model)?;
    let ck = file.parse()?;
    loader::check_bits(&ck, args.model.bits, quiet);
    let mut tok = Tok::from_checkpoint(&ck)?.ok_or_else(|| {
        anyhow!("{} has no tokenizer, so it cannot be evaluated on text; re-pack it with a tokenizer", file.path.display())
    })?;

    let ctx = args.ctx;
    if ctx < 4 {
        bail!("--ctx {ctx} is too small: a window scores positions ctx/2..ctx-1; use at least 4 (512 is usual)");
    }
    let batch = args.batch.unwrap_or(512).min(ctx);
    let base_file = match &args.kl_base {
        Some(p) => Some(loader::open_path(p, args.model.pack_encoding, args.model.group_size, !args.model.no_mmap)?),
        None => None,
    };
    let base_ck = match &base_file {
        Some(f) => Some(f.parse()?),
        None => None,
    };

    // Tokenize the whole file, as llama-perplexity does (special tokens are plain text).
    let text = read_text(&args.data, quiet)?;
    let t_tok = Instant::now();
    let tokens = tok.encode(&text, false)?;
    let tokenize_s = t_tok.elapsed().as_secs_f64();
    let add_bos = tok.add_bos == Some(true)
        || (tok.add_bos.is_none() && tok.bos.is_some() && tokens.first() == tok.bos.as_ref());
    let available = tokens.len() / ctx;
    if available == 0 {
        bail!(
            "{} has {} tokens, fewer than one window of --ctx {ctx}; use a smaller --ctx or a longer file",
            args.data.display(),
            tokens.len()
        );
    }
    let n_windows = args.chunks.map_or(available, |c| c.min(available));

    let mut main = load(&file, &ck, ctx, batch, args.model.bits)?;
    let mut base = match (&base_file, &base_ck) {
        (Some(f), Some(c)) => {
            loader::check_bits(c, args.kl_base_bits, quiet);
            let b = load(f, c, ctx, batch, args.kl_base_bits)?;
            if b.config.vocab_size != main.config.vocab_size {
                bail!(
                    "--kl-base has a vocabulary of {} tokens, the model {}; compare models that share a tokenizer",
                    b.config.vocab_size,
                    main.config.vocab_size
                );
            }
            Some(b)
        }
        _ => None,
    };
    let vocab = main.config.vocab_size;
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        bail!("the tokenizer produced id {bad}, outside the model's vocabulary of {vocab}; re-pack the model");
    }

    if !quiet {
        eprintln!(
            "edge-run: {} tokens in {} (tokenized in {tokenize_s:.2} s); {n_windows} of {available} windows of {ctx}, {} scored per window{}",
            tokens.len(),
            args.data.display(),
            ctx - 1 - ctx / 2,
            if add_bos { ", BOS first" } else { "" }
        );
    }

    let tty = std::io::stderr().is_terminal();
    let pb = if tty {
        ProgressBar::with_draw_target(Some(n_windows as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} windows  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let first = ctx / 2;
    let mut nll_main = Mean::default();
    let mut nll_base = Mean::default();
    let mut kl = Mean::default();
    let mut agree = 0u64;
    let mut window_ppl = Vec::with_capacity(n_windows);
    let t0 = Instant::now();
    let mut window = vec![0u32; ctx];
    for w in 0..n_windows {
        window.copy_from_slice(&tokens[w * ctx..(w + 1) * ctx]);
        if add_bos {
            if let Some(b) = tok.bos {
                window[0] = b;
            }
        }
        // Unscored first half: only the KV cache matters.
        let mut pos = 0;
        while pos < first {
            let n = batch.min(first - pos);
            main.model.forward_batch(&window[pos..pos + n], pos, Logits::Last)?;
            if let Some(b) = base.as_mut() {
                b.model.forward_batch(&window[pos..pos + n], pos, Logits::Last)?;
            }
            pos += n;
        }
        // Scored second half: every position's logits.
        while pos < ctx {
            let n = batch.min(ctx - pos);
            let lm = main.model.forward_batch(&window[pos..pos + n], pos, Logits::All)?;
            let lb = match base.as_mut() {
                Some(b) => Some(b.model.forward_batch(&window[pos..pos + n], pos, Logits::All)?),
                None => None,
            };
            for r in 0..n {
                let j = pos + r;
                if j + 1 >= ctx {
                    break;
                }
                let target = window[j + 1];
                let row_m = &lm[r * vocab..(r + 1) * vocab];
                nll_main.add(nll(row_m, target));
                if let Some(lb) = lb {
                    let row_b = &lb[r * vocab..(r + 1) * vocab];
                    nll_base.add(nll(row_b, target));
                    kl.add(kl_divergence(row_b, row_m));
                    if edge_runtime::sampler::argmax(row_b) == edge_runtime::sampler::argmax(row_m) {
                        agree += 1;
                    }
                }
            }
            pos += n;
        }
        let (p, _) = nll_main.ppl();
        window_ppl.push(p);
        let msg = match &base {
            Some(_) => format!("PPL {p:.4}  KL {:.6}", kl.mean()),
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
    let processed = n_windows * ctx * if base.is_some() { 2 } else { 1 };
    let scored = nll_main.n;
    let (ppl, ppl_se) = nll_main.ppl();
    let peak = stats::peak_rss_bytes();
    let n_scored = scored.max(1) as f64;
    let agree_p = agree as f64 / n_scored;
    let agree_se = if scored > 1 { (agree_p * (1.0 - agree_p) / (n_scored - 1.0)).sqrt() } else { 0.0 };

    if args.json {
        let kl_obj = base.as_ref().map(|b| {
            let (bp, bse) = nll_base.ppl();
            json!({
                "base": args.kl_base.as_ref().map(|p| p.display().to_string()),
                "base_checkpoint": b.file.path.display().to_string(),
                "base_bits": args.kl_base_bits,
                "base_ppl": bp,
                "base_ppl_stderr": bse,
                "mean_kl": kl.mean(),
                "kl_stderr": kl.stderr(),
                "max_kl": kl.max,
                "top1_agreement_percent": 100.0 * agree_p,
                "top1_agreement_stderr_percent": 100.0 * agree_se,
                "ln_ppl_ratio": nll_main.mean() - nll_base.mean(),
            })
        });
        let obj = json!({
            "model": args.model.model.as_ref().map(|p| p.display().to_string()),
            "checkpoint": main.file.path.display().to_string(),
            "packed": main.file.origin.name(),
            "data": args.data.display().to_string(),
            "ctx": ctx,
            "batch_size": batch,
            "bits": args.model.bits,
            "add_bos": add_bos,
            "n_tokens": tokens.len(),
            "windows": n_windows,
            "windows_available": available,
            "tokens_scored": scored,
            "mean_nll": nll_main.mean(),
            "ppl": ppl,
            "ppl_stderr": ppl_se,
            "window_ppl": window_ppl,
            "seconds": seconds,
            "tokenize_seconds": tokenize_s,
            "tokens_per_second": stats::rate(processed, seconds),
            "scored_tokens_per_second": stats::rate(scored as usize, seconds),
            "peak_rss_bytes": peak,
            "weight_bytes": main.weight_bytes,
            "kl": kl_obj,
        });
        let _ = writeln!(std::io::stdout().lock(), "{obj}");
        return Ok(());
    }

    let mut out = std::io::stdout().lock();
    let windows = if n_windows == 1 { "window" } else { "windows" };
    let mut lines = vec![format!("PPL = {ppl:.4} +/- {ppl_se:.5}  ({scored} tokens scored in {n_windows} {windows} of {ctx})")];
    if let Some(b) = &base {
        let (bp, bse) = nll_base.ppl();
        lines.push(format!("base PPL = {bp:.4} +/- {bse:.5}  ({})", b.file.path.display()));
        lines.push(format!("Mean KL(base || model) = {:.6} +/- {:.6}  (max {:.6})", kl.mean(), kl.stderr(), kl.max));
        lines.push(format!("Same top-1 = {:.3} +/- {:.3} %", 100.0 * agree_p, 100.0 * agree_se));
    }
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    eprintln!(
        "edge-run: {seconds:.2} s, {} ({processed} tokens through the model{}); peak RSS {}; weights {}",
        stats::fmt_rate(stats::rate(processed, seconds)),
        if base.is_some() { " and the base" } else { "" },
        peak.map(stats::human_bytes).unwrap_or_else(|| "n/a".into()),
        stats::human_bytes(main.weight_bytes as u64),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_of_uniform_is_log_n() {
        let l = [0.0f32; 8];
        assert!((nll(&l, 3) - 8f64.ln()).abs() < 1e-12);
        assert!((log_sum_exp(&[1000.0, 1000.0]) - (1000.0 + 2f64.ln())).abs() < 1e-9);
    }

    #[test]
    fn kl_is_zero_on_itself_and_positive_otherwise() {
        let a = [0.5f32, 1.5, -2.0, 0.0];
        let b = [0.1f32, 1.0, -1.0, 0.3];
        assert!(kl_divergence(&a, &a).abs() < 1e-12);
        assert!(kl_divergence(&a, &b) > 0.0);
        // Shifting logits does not change the distribution.
        let a2: Vec<f32> = a.iter().map(|x| x + 3.0).collect();
        assert!(kl_divergence(&a, &a2).abs() < 1e-9);
    }

    #[test]
    fn mean_and_stderr_like_llama_cpp() {
        let mut m = Mean::default();
        for v in [1.0, 2.0, 3.0, 4.0] {
            m.add(v);
        }
        assert!((m.mean() - 2.5).abs() < 1e-12);
        // population var 1.25; stderr = sqrt(1.25 / 3)
        assert!((m.stderr() - (1.25f64 / 3.0).sqrt()).abs() < 1e-12);
        let (p, se) = m.ppl();
        assert!((p - 2.5f64.exp()).abs() < 1e-9 && (se - p * m.stderr()).abs() < 1e-9);
    }
}
