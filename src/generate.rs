//! `edge-run [generate]`: prompt in, streamed continuation out.

use std::io::Write;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use edge_runtime::model::Logits;
use edge_runtime::sampler::{Sampler, SamplerConfig};
use serde_json::json;

use crate::board::Board;
use crate::budget;
use crate::cli::GenerateArgs;
use crate::controller;
use crate::energy;
use crate::loader;
use crate::memory;
use crate::report;
use crate::session::{self, KvSettings, Loaded};
use crate::stats;
use crate::tokenizer::{self, Tok};
use crate::verify;
use crate::views;

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Eos,
    Length,
    Context,
    /// stdout was closed (e.g. piped into `head`).
    Closed,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Eos => "eos",
            Stop::Length => "length",
            Stop::Context => "context",
            Stop::Closed => "closed",
        }
    }
}

/// Writes the continuation as it grows: decodes every generated id (with a few prompt ids as
/// left context, so tokenizers that strip a leading space decode the first word right), and
/// prints the new suffix. Text ending in an incomplete UTF-8 sequence (U+FFFD) waits for the
/// next token.
struct Streamer<'t> {
    tok: Option<&'t Tok>,
    context: Vec<u32>,
    context_text: String,
    skip_special: bool,
    printed: String,
    enabled: bool,
    out: std::io::StdoutLock<'static>,
    closed: bool,
}

impl<'t> Streamer<'t> {
    fn new(tok: Option<&'t Tok>, prompt: &[u32], skip_special: bool, enabled: bool) -> Result<Self> {
        let context: Vec<u32> = prompt[prompt.len().saturating_sub(4)..].to_vec();
        let context_text = match tok {
            Some(t) => t.decode(&context, skip_special)?,
            None => String::new(),
        };
        Ok(Streamer {
            tok,
            context,
            context_text,
            skip_special,
            printed: String::new(),
            enabled,
            out: std::io::stdout().lock(),
            closed: false,
        })
    }

    /// The decoded continuation of `generated`.
    fn text(&self, generated: &[u32]) -> Result<String> {
        let Some(t) = self.tok else {
            return Ok(generated.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
        };
        let mut ids = self.context.clone();
        ids.extend_from_slice(generated);
        let full = t.decode(&ids, self.skip_special)?;
        Ok(match full.strip_prefix(&self.context_text) {
            Some(rest) => rest.to_owned(),
            // Decoding the context alone differs from its decoding within the longer sequence:
            // fall back to decoding the continuation by itself.
            None => t.decode(generated, self.skip_special)?,
        })
    }

    /// Print what `generated` adds to the text printed so far. `last`: flush even an incomplete
    /// character.
    fn update(&mut self, generated: &[u32], last: bool) -> Result<()> {
        let text = self.text(generated)?;
        if !last && text.ends_with('\u{FFFD}') {
            return Ok(());
        }
        if let Some(new) = text.strip_prefix(self.printed.as_str()) {
            if self.enabled && !new.is_empty() {
                let new = new.to_owned();
                self.write(new.as_bytes());
            }
        }
        // Otherwise an earlier piece decodes differently now (rare: bytes merging across
        // tokens); what was printed stays, and printing continues from the new text's end.
        self.printed = text;
        Ok(())
    }

    fn write(&mut self, b: &[u8]) {
        if self.closed {
            return;
        }
        if self.out.write_all(b).and_then(|_| self.out.flush()).is_err() {
            // EPIPE and the like: the reader went away; stop writing, finish quietly.
            self.closed = true;
        }
    }
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32) ^ 0x9E37_79B9_7F4A_7C15
}

/// Context size when --ctx is not given (capped at the model's).
const DEFAULT_CTX: usize = 2048;

/// Bytes of prompt text allowed per position of the model's context: tokens average 3-5
/// bytes of English, and few exceed 64.
const PROMPT_BYTES_PER_TOKEN: usize = 64;

/// The memory a run is planned for: `--budget`, or what the device has free.
struct FitTarget {
    bytes: u64,
    /// The budget the controller holds the process to (`--budget`); `None` when fitting to
    /// free memory, where the room is what the system and the cgroup have left.
    hold_to: Option<u64>,
    /// The option, or `fit`, as errors and --json name it.
    flag: &'static str,
    /// The startup line.
    why: String,
}

/// `--budget`, else (without a flag that chooses views or the cache, and without --no-fit)
/// the memory free on this device now.
fn fit_target(args: &GenerateArgs, board: Option<&Board>) -> Result<Option<FitTarget>> {
    if let Some(b) = args.budget {
        return Ok(Some(FitTarget {
            bytes: b,
            hold_to: Some(b),
            flag: "--budget",
            why: format!("budget {} (--budget)", stats::human_bytes(b)),
        }));
    }
    let m = &args.model;
    let chosen = m.bits.is_some() || m.plan.is_some() || m.target_bits.is_some() || m.weight_budget.is_some();
    if args.no_fit || chosen || !args.kv.kv_bits.is_empty() || args.kv.kv_window.is_some() {
        return Ok(None);
    }
    let reading = memory::Sources::detect().read();
    Ok(memory::device_budget(&reading, board.map(|b| (b.default_budget_fraction, b.margin_bytes)))
        .map(|(bytes, why)| FitTarget { bytes, hold_to: None, flag: "fit", why }))
}

pub fn run(args: &GenerateArgs, board: Option<&Board>) -> Result<()> {
    let quiet = args.json;
    let t_load = Instant::now();
    let file = session::open(&args.model)?;
    // With a budget the tokenizer is loaded before the plan, so the plan's fixed part
    // includes it. Without --budget (and without any flag choosing views or the KV cache) a
    // checkpoint with a sensitivity profile is fitted to the memory the device has free.
    let fit = fit_target(args, board)?;
    let mut early_tok = None;
    let mut chosen = None;
    let loaded = match &fit {
        None => Loaded::new(&file, &args.model)?,
        Some(target) => Loaded::with(&file, |ck, arch, config| {
            let tok = Tok::from_checkpoint(ck)?;
            if target.hold_to.is_none() && views::profile_planner(ck, arch, config, &file.path)?.is_none() {
                // Nothing to plan from: the default views, as without a fit.
                early_tok = Some(tok);
                return views::select(ck, arch, config, &args.model, &file.path);
            }
            let req = budget::Request {
                bytes: target.bytes,
                ctx: args.ctx,
                kv: (!args.kv.kv_bits.is_empty()).then(|| args.kv.formats()).map(|f| f[0]),
                batch: args.batch,
                default_ctx: DEFAULT_CTX,
            };
            if args.kv.kv_bits.len() > 1 {
                bail!("--kv-bits takes one format here; a comma-separated list is for `edge-run bench`");
            }
            let c = budget::select(ck, arch, config, &file.path, target.flag, req).map_err(|e| match &target.hold_to {
                Some(_) => e,
                None => anyhow!("{}: {e:#}; free memory, or pass a larger --budget to plan for it anyway", target.why),
            })?;
            early_tok = Some(tok);
            let selection = c.selection.clone();
            chosen = Some(c);
            Ok(selection)
        })?,
    };
    let plan = chosen.as_ref().map(|c| &c.budget);
    let (ck, config, selection, footprint) = (&loaded.ck, &loaded.config, &loaded.selection, &loaded.footprint);
    let mut tok = match early_tok {
        Some(t) => t,
        None => Tok::from_checkpoint(ck)?,
    };

    // The prompt, as token ids.
    let (prompt_text, prompt_ids) = if let Some(ids) = &args.prompt_ids {
        let ids = tokenizer::parse_ids(ids, config.vocab_size, "--prompt-ids")?;
        if ids.is_empty() {
            bail!("--prompt-ids is empty; give at least one token id");
        }
        if args.chat {
            bail!("--chat needs a text prompt (--prompt), not --prompt-ids");
        }
        (None, ids)
    } else {
        // Far more text than the model's context could hold is refused before it is read and
        // tokenized (minutes for 100 MB): a token is rarely longer than a few bytes.
        let most = PROMPT_BYTES_PER_TOKEN * config.max_seq_len.max(args.ctx.unwrap_or(0));
        let too_long = |bytes: u64| {
            anyhow!(
                "the prompt is {} of text, far more than this model's context of {} tokens can hold (at most {} allowed); shorten it",
                stats::human_bytes(bytes),
                config.max_seq_len,
                stats::human_bytes(most as u64)
            )
        };
        let text = match (&args.prompt, &args.file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => {
                let len = std::fs::metadata(f).map_err(|e| anyhow!("cannot read prompt file {}: {e}", f.display()))?.len();
                if len > most as u64 {
                    return Err(too_long(len));
                }
                std::fs::read_to_string(f).map_err(|e| anyhow!("cannot read prompt file {}: {e}", f.display()))?
            }
            (None, None) => bail!("no prompt given; pass --prompt TEXT (or --file FILE, or --prompt-ids IDS)"),
        };
        if text.is_empty() {
            bail!("the prompt is empty; pass a non-empty --prompt");
        }
        if text.len() > most {
            return Err(too_long(text.len() as u64));
        }
        let t = tok.as_mut().ok_or_else(|| {
            anyhow!("this checkpoint has no tokenizer; pass the prompt as token ids with --prompt-ids \"1 2 3\"")
        })?;
        let ids = if args.chat {
            let rendered = t.render_chat(args.system.as_deref(), &text)?;
            t.encode(&rendered, true)?
        } else {
            t.encode(&text, true)?
        };
        if ids.is_empty() {
            bail!("the prompt tokenizes to no tokens; pass a non-empty --prompt");
        }
        (Some(text), ids)
    };
    if let Some(&bad) = prompt_ids.iter().find(|&&i| i as usize >= config.vocab_size) {
        bail!("the tokenizer produced id {bad}, outside the model's vocabulary of {}; re-pack the model", config.vocab_size);
    }

    let ctx = match (plan, args.ctx) {
        (Some(b), _) => b.shape.ctx,
        (None, c) => match c {
        Some(c) if c > config.max_seq_len => {
            if !quiet {
                eprintln!(
                    "edge-run: warning: --ctx {c} exceeds the model's trained context; using {}",
                    config.max_seq_len
                );
            }
            config.max_seq_len
        }
        Some(c) => c,
        None => DEFAULT_CTX.min(config.max_seq_len),
        },
    };
    let kv = match plan {
        Some(b) => KvSettings { format: b.shape.kv, window: None },
        None => KvSettings::from_args(&args.kv, ctx)?,
    };
    if kv.window.is_none() && prompt_ids.len() > ctx {
        bail!(
            "the prompt is {} tokens but the context holds {ctx}; raise --ctx (the model allows up to {}), shorten the prompt, or keep only recent positions with --kv-window N",
            prompt_ids.len(),
            config.max_seq_len
        );
    }

    let batch = plan.map_or(args.batch.min(ctx), |b| b.shape.batch);
    // The controller's ladder is planned before the model is built: the knapsack's tables
    // come and go while little is resident.
    let mut control = match &chosen {
        Some(c) if !args.no_control => Some(controller::Memory::new(
            controller::Start { planner: &c.planner, weights: c.weights.clone(), budget: &c.budget, hold_to: fit.as_ref().and_then(|t| t.hold_to) },
            config,
        )?),
        _ => None,
    };
    memory::trim_heap();
    let mut model = loaded.model(ctx, batch, kv)?;
    // A controller may raise views later: then every plane is checked, not only those read now.
    let mut verifier = (!args.model.no_verify).then(|| verify::Verifier::start(&file.path, ck, &loaded.selection.plan, control.is_some()));
    let power_watts = match (args.power, &args.power_budget_file) {
        (Some(w), _) => Some(w),
        (None, Some(f)) => Some(energy::read_budget(f)?),
        (None, None) => None,
    };
    let meter = energy::meter(args.power_sensor.as_deref(), board, power_watts.is_some())?;
    let mut power_loop = match (power_watts, &meter) {
        (Some(w), Some(m)) => {
            // The views and KV precision are a lever where the memory controller has a ladder.
            let ladder = control.as_ref().map(controller::Memory::power_ladder).unwrap_or_default();
            let p = energy::PowerLoop::new(w, m, ladder, args.power_budget_file.clone(), board);
            if let Some(e) = &p.pinning.error {
                eprintln!("edge-run: warning: {}; the power loop goes on unpinned", p.pinning.describe().replace(&format!("({e})"), e));
            }
            Some(p)
        }
        _ => None,
    };
    let weight_bytes = footprint.weight_bytes as usize;
    let state_bytes = model.state_bytes();
    let (kv_total, kv_per_token) = model.kv_bytes();
    let load_s = t_load.elapsed().as_secs_f64() - file.resolve_seconds;
    // Like its events, the controller's line goes to stderr with --json too.
    if let (Some(m), Some(c)) = (&control, &chosen) {
        eprintln!("{}", m.describe(&c.planner)[0]);
    }
    if !quiet {
        let name = ck.get_str(edge_runtime::format::keys::NAME).unwrap_or("model");
        eprintln!(
            "edge-run: loaded {} ({name}, {} layers, {} weights, {}) in {load_s:.2} s",
            file.path.display(),
            config.n_layers,
            stats::human_bytes(weight_bytes as u64),
            if file.mmap { "mmap" } else { "read" },
        );
        if let Some(b) = board {
            eprintln!("edge-run: board {}", b.describe(edge_runtime::kernels::threads(), edge_runtime::kernels::kernels().name));
        }
        if let (Some(t), Some(c)) = (&fit, &chosen) {
            let b = &c.budget;
            let top = b.weight_allowance >= c.planner.bytes_range().1;
            if t.hold_to.is_none() && top && b.lowered.is_empty() {
                eprintln!("edge-run: fitted to {}: the whole run fits, nothing lowered", t.why);
            } else {
                eprintln!("edge-run: fitted to {}", t.why);
                for line in b.describe(footprint.weight_bytes, footprint.bits_per_weight(), selection.predicted_kl) {
                    eprintln!("{line}");
                }
                eprintln!("{}", selection.describe(footprint));
            }
        } else if !selection.is_default() {
            eprintln!("{}", selection.describe(footprint));
        }
        if kv != KvSettings::default() {
            eprintln!(
                "edge-run: KV cache {}: {} ({} per token)",
                kv.describe(),
                stats::human_bytes(kv_total as u64),
                stats::human_bytes(kv_per_token as u64)
            );
        }
    }

    let seed = args.seed.unwrap_or_else(random_seed);
    let scfg = SamplerConfig { temperature: args.temp, top_k: args.top_k, top_p: args.top_p, seed };
    let mut sampler = Sampler::new(scfg, config.vocab_size);
    let stops: Vec<u32> = match &tok {
        Some(t) => t.stops.clone(),
        None => ck
            .get_u64(edge_runtime::format::keys::EOS_ID)
            .and_then(|v| u32::try_from(v).ok())
            .into_iter()
            .collect(),
    };

    if let (Some(m), false) = (&meter, quiet) {
        let hold = power_loop
            .as_ref()
            .zip(power_watts)
            .map(|(p, w)| {
                let views = match p.rungs() {
                    1 => "views/KV: the run's own (no ladder: needs a profiled checkpoint and the memory controller)".to_string(),
                    n => format!("views/KV: {n} rungs of the memory controller's ladder"),
                };
                format!("; holding {w:.2} W (a {:.0} s average; {:.2} W at rest); {}; {views}", energy::WINDOW.as_secs_f64(), p.idle(), p.pinning.describe())
            })
            .unwrap_or_default();
        eprintln!("edge-run: power sensor: {}{hold}", m.sensor_name());
    }
    let j_start = meter.as_ref().map(|m| m.joules());
    // Prefill in batches; the last batch's logits give the first token.
    let t_prefill = Instant::now();
    let mut pos = 0;
    let mut next = 0u32;
    for chunk in prompt_ids.chunks(batch) {
        if let (Some(m), Some(c)) = (control.as_mut(), chosen.as_ref()) {
            if let Some(e) = m.tick(pos, &mut model, ck, &file, &c.planner)? {
                eprintln!("{}", e.line());
            }
        }
        if let Some(v) = &verifier {
            v.poll()?;
        }
        let logits = match model.forward_batch(chunk, pos, Logits::Last) {
            Ok(l) => l,
            Err(e) => return Err(explain(&mut verifier, e.into())),
        };
        pos += chunk.len();
        if pos == prompt_ids.len() {
            next = sampler.sample(logits);
        }
    }
    let prefill_s = t_prefill.elapsed().as_secs_f64();
    let j_prefill = meter.as_ref().map(|m| m.joules());

    let mut streamer = Streamer::new(tok.as_ref(), &prompt_ids, !args.special, !args.json)?;
    let limit = args.n_predict.limit();
    let mut generated: Vec<u32> = Vec::with_capacity(limit.unwrap_or(ctx).min(ctx));
    let t_decode = Instant::now();
    let mut decode_tokens = 0usize;
    let stop = if limit == Some(0) {
        Stop::Length
    } else {
        loop {
            generated.push(next);
            if !args.ignore_eos && stops.contains(&next) {
                break Stop::Eos;
            }
            streamer.update(&generated, false)?;
            if streamer.closed {
                break Stop::Closed;
            }
            if limit.is_some_and(|n| generated.len() >= n) {
                break Stop::Length;
            }
            // A window evicts old positions instead of filling up.
            if model.kv_window().is_none() && pos >= ctx {
                break Stop::Context;
            }
            if let (Some(m), Some(c)) = (control.as_mut(), chosen.as_ref()) {
                if let Some(e) = m.tick(pos, &mut model, ck, &file, &c.planner)? {
                    eprintln!("{}", e.line());
                }
            }
            if let (Some(p), Some(m)) = (power_loop.as_mut(), meter.as_ref()) {
                let memory = control.as_mut().zip(chosen.as_ref()).map(|(c, ch)| (c, &ch.planner));
                for line in p.before(pos, m, memory) {
                    eprintln!("{line}");
                }
            }
            if let Some(v) = &verifier {
                v.poll()?;
            }
            let t_token = Instant::now();
            let logits = match model.forward(next, pos) {
                Ok(l) => l,
                Err(e) => return Err(explain(&mut verifier, e.into())),
            };
            let compute = t_token.elapsed();
            pos += 1;
            decode_tokens += 1;
            next = sampler.sample(logits);
            if let Some(p) = power_loop.as_mut() {
                // A move of the views goes on before the pause, rungs counted in the duty.
                p.after(compute, || match (control.as_mut(), chosen.as_ref()) {
                    (Some(m), Some(c)) if m.moving() => {
                        if let Some(e) = m.tick(pos, &mut model, ck, &file, &c.planner)? {
                            eprintln!("{}", e.line());
                        }
                        Ok(true)
                    }
                    _ => Ok(false),
                })?;
            }
        }
    };
    let decode_s = t_decode.elapsed().as_secs_f64();
    // A run shorter than the check waits for it: its text is not given out unverified.
    let verified = verifier.map(verify::Verifier::finish).transpose()?;
    let energy_json = match (&meter, j_start, j_prefill) {
        (Some(m), Some(j0), Some(j1)) => {
            let j2 = m.joules();
            Some(json!({
                "sensor": m.sensor_name(),
                "samples": m.samples(),
                "prefill": energy::phase_json(j1 - j0, prompt_ids.len(), prefill_s),
                "decode": energy::phase_json(j2 - j1, decode_tokens, decode_s),
            }))
        }
        _ => None,
    };
    streamer.update(&generated, true)?;
    let text = streamer.text(&generated)?;
    let peak = stats::peak_rss_bytes();
    let stop_message = (stop == Stop::Context).then(|| {
        format!(
            "the KV cache is full ({ctx} positions, --ctx): generation stopped; raise --ctx, or keep only recent positions with --kv-window N to go on at constant memory"
        )
    });

    if args.json {
        if let Some(m) = &stop_message {
            eprintln!("edge-run: {m}");
        }
        let obj = json!({
            "model": args.model.model.as_ref().map(|p| p.display().to_string()),
            "checkpoint": file.path.display().to_string(),
            "packed": file.origin.name(),
            "prompt": prompt_text,
            "chat": args.chat,
            "prompt_tokens": prompt_ids,
            "n_prompt_tokens": prompt_ids.len(),
            "text": text,
            "tokens": generated,
            "n_generated": generated.len(),
            "stop_reason": stop.name(),
            "stop_message": stop_message,
            "prefill": { "tokens": prompt_ids.len(), "seconds": prefill_s,
                         "tokens_per_second": stats::rate(prompt_ids.len(), prefill_s) },
            "decode": { "tokens": decode_tokens, "seconds": decode_s,
                        "tokens_per_second": stats::rate(decode_tokens, decode_s) },
            "load_seconds": load_s,
            "verified": verified.map(verify::Summary::to_json),
            "peak_rss_bytes": peak,
            "weight_bytes": weight_bytes,
            "decode_bytes": footprint.decode_bytes,
            "kv_cache_bytes": kv_total,
            "kv_cache": kv.to_json((kv_total, kv_per_token)),
            "state_bytes": state_bytes,
            "mmap": file.mmap,
            "ctx": ctx,
            "batch_size": batch,
            "threads": edge_runtime::kernels::threads(),
            "device": args.model.device.to_string(),
            "board": board.map(Board::to_json),
            "bits": args.model.bits,
            "plan": selection.to_json(footprint),
            "budget": chosen.as_ref().map(|c| {
                let mut j = c.budget.to_json(footprint.weight_bytes);
                j["source"] = json!(fit.as_ref().map(|t| t.flag));
                j["plan_ms"] = json!(c.plan_ms);
                j
            }),
            "energy": energy_json,
            "power_control": power_loop.as_ref().map(energy::PowerLoop::to_json),
            "memory_control": control.as_ref().map(|m| m.to_json(&chosen.as_ref().expect("a controller has a plan").planner)),
            "bits_per_weight": footprint.bits_per_weight(),
            "sampler": { "temperature": report::f32_json(args.temp), "top_k": args.top_k, "top_p": report::f32_json(args.top_p), "seed": seed },
            "config": report::config_json(config),
        });
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{obj}");
        return Ok(());
    }

    streamer.write(b"\n");
    if stop == Stop::Closed {
        return Ok(());
    }
    eprintln!();
    eprintln!(
        "edge-run: {} prompt tokens, {} generated (stop: {}), seed {seed}",
        prompt_ids.len(),
        generated.len(),
        stop.name()
    );
    if let Some(m) = &stop_message {
        eprintln!("edge-run: {m}");
    }
    eprintln!(
        "edge-run: prefill {:>5} tokens in {prefill_s:>7.3} s = {}",
        prompt_ids.len(),
        stats::fmt_rate(stats::rate(prompt_ids.len(), prefill_s))
    );
    eprintln!(
        "edge-run: decode  {decode_tokens:>5} tokens in {decode_s:>7.3} s = {}",
        stats::fmt_rate(stats::rate(decode_tokens, decode_s))
    );
    if let Some(e) = &energy_json {
        let f = |v: &serde_json::Value| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.3}"));
        eprintln!(
            "edge-run: energy ({}): prefill {} J ({} J/token), decode {} J ({} J/token, {} W)",
            e["sensor"].as_str().unwrap_or_default(),
            f(&e["prefill"]["joules"]),
            f(&e["prefill"]["joules_per_token"]),
            f(&e["decode"]["joules"]),
            f(&e["decode"]["joules_per_token"]),
            f(&e["decode"]["watts"]),
        );
    }
    eprintln!(
        "edge-run: memory: peak RSS {}{}; weights {} ({} read per token); KV cache {} ({}, {} per token, ctx {ctx}); run-time state {}",
        peak.map(stats::human_bytes).unwrap_or_else(|| "n/a".into()),
        if matches!(file.origin, loader::Origin::Packed { .. }) { " (includes packing)" } else { "" },
        stats::human_bytes(weight_bytes as u64),
        stats::human_bytes(footprint.decode_bytes),
        stats::human_bytes(kv_total as u64),
        kv.describe(),
        stats::human_bytes(kv_per_token as u64),
        stats::human_bytes(state_bytes as u64),
    );
    Ok(())
}

/// A failure of the forward pass, or the checksum mismatch behind it (see [`verify::Verifier::explain`]).
fn explain(verifier: &mut Option<verify::Verifier>, e: anyhow::Error) -> anyhow::Error {
    match verifier {
        Some(v) => v.explain(e),
        None => e,
    }
}
