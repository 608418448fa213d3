//! The perplexity engine of `eval` and the sweep: perplexity exactly as llama.cpp's
//! `llama-perplexity` computes it, and KL divergence against a base model (as
//! `llama-perplexity --kl-divergence`).
//!
//! Protocol: the file is read as is and tokenized whole (BOS first only if the model adds one).
//! It is cut into non-overlapping windows of `ctx` tokens (only full windows); each runs from
//! position 0 (with BOS replacing its first token when the model adds BOS), and the positions
//! `j` in `[ctx/2, ctx-1)` are scored: the NLL of token `j+1` under `softmax(logits[j])`, in f64.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use edge_runtime::model::Logits;
use edge_runtime::{Checkpoint, Config, Model};

use crate::session::{KvSettings, Loaded};
use crate::tokenizer::{self, Tok};

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

impl Mean {
    pub fn count(&self) -> u64 {
        self.n
    }
    pub fn max(&self) -> f64 {
        self.max
    }
}

/// The evaluation text, tokenized, and its windows.
pub struct Corpus {
    pub tokens: Vec<u32>,
    pub ctx: usize,
    /// Windows evaluated.
    pub n_windows: usize,
    /// Full windows in the file.
    pub available: usize,
    /// Whether each window starts with BOS.
    pub add_bos: bool,
    pub bos: Option<u32>,
    pub tokenize_seconds: f64,
}

impl Corpus {
    /// Read `data` and tokenize it whole, as llama-perplexity does (special tokens are plain
    /// text), or, with `token_ids`, read it as token ids (whitespace- or comma-separated, or a
    /// JSON array) used as they are, each below `vocab`; check `ctx` and count the windows.
    pub fn new(tok: Option<&mut Tok>, data: &Path, ctx: usize, chunks: Option<usize>, vocab: usize, quiet: bool) -> Result<Corpus> {
        if ctx < 4 {
            bail!("--ctx {ctx} is too small: a window scores positions ctx/2..ctx-1; use at least 4 (512 is usual)");
        }
        let text = read_text(data, quiet)?;
        let t_tok = Instant::now();
        let (tokens, add_bos, bos) = match tok {
            Some(tok) => {
                let tokens = tok.encode(&text, false)?;
                let add_bos = tok.add_bos == Some(true)
                    || (tok.add_bos.is_none() && tok.bos.is_some() && tokens.first() == tok.bos.as_ref());
                (tokens, add_bos, tok.bos)
            }
            None => {
                let ids = tokenizer::parse_ids(text.trim().trim_start_matches('[').trim_end_matches(']'), vocab, &data.display().to_string())?;
                (ids, false, None)
            }
        };
        let tokenize_seconds = t_tok.elapsed().as_secs_f64();
        let available = tokens.len() / ctx;
        if available == 0 {
            bail!(
                "{} has {} tokens, fewer than one window of --ctx {ctx}; use a smaller --ctx or a longer file",
                data.display(),
                tokens.len()
            );
        }
        let n_windows = chunks.map_or(available, |c| c.min(available));
        Ok(Corpus { tokens, ctx, n_windows, available, add_bos, bos, tokenize_seconds })
    }

    /// First scored position.
    pub fn first(&self) -> usize {
        self.ctx / 2
    }

    /// Scored positions per window (`j` in `[ctx/2, ctx-1)`).
    pub fn scored_per_window(&self) -> usize {
        self.ctx - 1 - self.first()
    }

    /// The tokens of window `w` (BOS first when the model adds one).
    pub fn window(&self, w: usize, out: &mut [u32]) {
        out.copy_from_slice(&self.tokens[w * self.ctx..(w + 1) * self.ctx]);
        if self.add_bos {
            if let Some(b) = self.bos {
                out[0] = b;
            }
        }
    }

    pub fn check_vocab(&self, vocab: usize) -> Result<()> {
        if let Some(&bad) = self.tokens.iter().find(|&&t| t as usize >= vocab) {
            bail!("the tokenizer produced id {bad}, outside the model's vocabulary of {vocab}; re-pack the model");
        }
        Ok(())
    }

    /// The line `eval` prints before it starts.
    pub fn describe(&self, data: &Path) -> String {
        format!(
            "edge-run: {} tokens in {} (tokenized in {:.2} s); {} of {} windows of {}, {} scored per window{}",
            self.tokens.len(),
            data.display(),
            self.tokenize_seconds,
            self.n_windows,
            self.available,
            self.ctx,
            self.scored_per_window(),
            if self.add_bos { ", BOS first" } else { "" }
        )
    }
}

/// What a model scores on the windows: NLL of the next token, and against a base's logits the
/// KL divergence and top-1 agreement.
#[derive(Debug, Default, Clone)]
pub struct Scores {
    pub nll: Mean,
    pub kl: Mean,
    pub agree: u64,
    /// Calibration of the top-1 next-token probability.
    pub calib: Calibration,
}

/// Equal-width confidence bins of the expected calibration error.
pub const ECE_BINS: usize = 15;

/// Expected calibration error of next-token predictions: each scored position's top-1
/// probability (its confidence) goes into one of [`ECE_BINS`] equal-width bins over [0, 1]
/// with whether the top-1 token was the true next token; ECE is the position-weighted mean
/// over bins of |accuracy - mean confidence|. Compression should not make a model
/// overconfident: a view whose ECE grows says so even where perplexity moves little.
#[derive(Debug, Default, Clone)]
pub struct Calibration {
    count: [u64; ECE_BINS],
    correct: [u64; ECE_BINS],
    confidence: [f64; ECE_BINS],
}

impl Calibration {
    /// One prediction: its top-1 probability and whether the top-1 token was right.
    pub fn add(&mut self, confidence: f64, correct: bool) {
        // Bin b holds (b/15, (b+1)/15]; 0 goes to the first bin, 1 to the last.
        let b = ((confidence * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        self.count[b] += 1;
        self.correct[b] += correct as u64;
        self.confidence[b] += confidence;
    }

    /// One position: the model's logits and the true next token.
    pub fn add_logits(&mut self, row: &[f32], target: u32) {
        let top = edge_runtime::sampler::argmax(row);
        let confidence = (row[top as usize] as f64 - log_sum_exp(row)).exp();
        self.add(confidence, top == target);
    }

    /// The expected calibration error (NaN with no predictions).
    pub fn ece(&self) -> f64 {
        let n: u64 = self.count.iter().sum();
        if n == 0 {
            return f64::NAN;
        }
        (0..ECE_BINS)
            .filter(|&b| self.count[b] > 0)
            .map(|b| {
                let c = self.count[b] as f64;
                (self.correct[b] as f64 / c - self.confidence[b] / c).abs() * c
            })
            .sum::<f64>()
            / n as f64
    }

    /// Mean top-1 probability and top-1 accuracy over all predictions (NaN with none).
    pub fn confidence_accuracy(&self) -> (f64, f64) {
        let n = self.count.iter().sum::<u64>() as f64;
        (self.confidence.iter().sum::<f64>() / n, self.correct.iter().sum::<u64>() as f64 / n)
    }
}

impl Scores {
    /// Score one position: the model's logits `row`, the true next token, the base's logits.
    pub fn add(&mut self, row: &[f32], target: u32, base: Option<&[f32]>) {
        self.nll.add(nll(row, target));
        self.calib.add_logits(row, target);
        if let Some(b) = base {
            self.kl.add(kl_divergence(b, row));
            if edge_runtime::sampler::argmax(b) == edge_runtime::sampler::argmax(row) {
                self.agree += 1;
            }
        }
    }

    /// Top-1 agreement with the base (a fraction) and its standard error.
    pub fn agreement(&self) -> (f64, f64) {
        let n = self.kl.count();
        if n == 0 {
            return (f64::NAN, 0.0);
        }
        let p = self.agree as f64 / n as f64;
        let se = if n > 1 { (p * (1.0 - p) / (n as f64 - 1.0)).sqrt() } else { 0.0 };
        (p, se)
    }
}

/// Run `model` over window `window` (positions 0..ctx, from an empty cache) in forward passes
/// of at most `batch` tokens, and score its scored positions into `scores` (against `base`,
/// the base model's logits of the same positions, one row per position, when given). `keep`
/// collects the logits of the scored positions (to serve as the base of other models).
pub fn score_window(
    model: &mut Model<'_>,
    corpus: &Corpus,
    window: &[u32],
    batch: usize,
    base: Option<&[f32]>,
    scores: &mut Scores,
    mut keep: Option<&mut Vec<f32>>,
) -> Result<()> {
    let ctx = corpus.ctx;
    let first = corpus.first();
    let vocab = model.config.vocab_size;
    if let Some(k) = keep.as_deref_mut() {
        k.clear();
    }
    // Every window starts from an empty cache (a KV window's sink is captured anew).
    model.reset_kv();
    // Unscored first half: only the KV cache matters.
    let mut pos = 0;
    while pos < first {
        let n = batch.min(first - pos);
        model.forward_batch(&window[pos..pos + n], pos, Logits::Last)?;
        pos += n;
    }
    // Scored second half: every position's logits.
    while pos < ctx {
        let n = batch.min(ctx - pos);
        let logits = model.forward_batch(&window[pos..pos + n], pos, Logits::All)?;
        for r in 0..n {
            let j = pos + r;
            if j + 1 >= ctx {
                break;
            }
            let row = &logits[r * vocab..(r + 1) * vocab];
            let b = base.map(|b| &b[(j - first) * vocab..(j - first + 1) * vocab]);
            scores.add(row, window[j + 1], b);
            if let Some(k) = keep.as_deref_mut() {
                k.extend_from_slice(row);
            }
        }
        pos += n;
    }
    Ok(())
}

/// The model of `loaded` for windows of `ctx` tokens, run in forward passes of at most `batch`,
/// its KV cache kept as `kv` says (with a KV window shorter than `ctx`, the positions past it
/// run one token at a time).
pub fn window_model<'f>(loaded: &Loaded<'f>, ctx: usize, batch: usize, kv: KvSettings) -> Result<Model<'f>> {
    check_ctx(loaded, ctx)?;
    loaded.model(ctx, batch, kv)
}

/// Refuse windows longer than the trained context of `loaded` (eval calls it as soon as the
/// model is open, before the data is read and tokenized).
pub fn check_ctx(loaded: &Loaded<'_>, ctx: usize) -> Result<()> {
    if ctx > loaded.config.max_seq_len {
        bail!(
            "--ctx {ctx} exceeds the trained context of {} ({} tokens); use a smaller --ctx",
            loaded.path().display(),
            loaded.config.max_seq_len
        );
    }
    Ok(())
}

/// Refuse to compare `other` (`what`: `--kl-base`, `baseline FILE`) with a model of another
/// vocabulary.
pub fn same_vocab(what: &str, other: &Config, model: &Config) -> Result<()> {
    if other.vocab_size != model.vocab_size {
        bail!(
            "{what} has a vocabulary of {} tokens, the model {}; compare models that share a tokenizer",
            other.vocab_size,
            model.vocab_size
        );
    }
    Ok(())
}

pub fn read_text(path: &Path, quiet: bool) -> Result<String> {
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

/// The tokenizer the evaluation text needs (none when `--token-ids` gives ids).
pub fn corpus_tokenizer(ck: &Checkpoint<'_>, path: &Path, token_ids: bool) -> Result<Option<Tok>> {
    if token_ids {
        return Ok(None);
    }
    Ok(Some(Tok::from_checkpoint(ck)?.ok_or_else(|| {
        anyhow!(
            "{} has no tokenizer, so it cannot be evaluated on text; re-pack it with a tokenizer, or pass token ids with --token-ids",
            path.display()
        )
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_of_a_hand_checked_case() {
        // Bin 14 (14/15, 1]: confidences 0.95 and 0.99, one right: |0.5 - 0.97| = 0.47.
        // Bin 7 (7/15, 8/15]: confidence 0.5, right: |1 - 0.5| = 0.5.
        // Bin 0 [0, 1/15]: confidence 0.0, wrong: 0.
        // ECE = (2 * 0.47 + 1 * 0.5 + 1 * 0) / 4 = 0.36.
        let mut c = Calibration::default();
        c.add(0.95, true);
        c.add(0.99, false);
        c.add(0.5, true);
        c.add(0.0, false);
        assert!((c.ece() - 0.36).abs() < 1e-12, "{}", c.ece());
        assert!(Calibration::default().ece().is_nan());
        // A perfectly calibrated bin: 0.6 confident, right 3 times in 5 -> ECE 0.
        let mut p = Calibration::default();
        for i in 0..5 {
            p.add(0.6, i < 3);
        }
        assert!(p.ece().abs() < 1e-12);
        // From logits: uniform over 4 tokens gives confidence 1/4 in bin 3 (0.2, 0.2667].
        let mut l = Calibration::default();
        l.add_logits(&[0.0; 4], 0);
        assert_eq!(l.count[3], 1);
        assert!((l.ece() - 0.75).abs() < 1e-12);
    }

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
