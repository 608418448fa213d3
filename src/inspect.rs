//! `edge-run inspect`: what a checkpoint holds, and whether its checksums hold.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use edge_runtime::format::{keys, Encoding, MetaValue, SegmentKind};
use edge_runtime::{Checkpoint, Config, Error};
use serde_json::json;

use crate::cli::InspectArgs;
use crate::loader;
use crate::profile::{Baseline, Profile};
use crate::report::one_line;
use crate::stats::human_bytes;
use crate::tokenizer::Tok;

/// Longest metadata string shown in full.
const MAX_SHOWN: usize = 72;

fn elide(s: &str) -> String {
    let n = s.chars().count();
    if n <= MAX_SHOWN && !s.contains('\n') {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(48).collect();
    format!("{head:?}... ({n} chars)")
}

fn meta_text(v: &MetaValue<'_>) -> String {
    match v {
        MetaValue::U64(x) => x.to_string(),
        MetaValue::I64(x) => x.to_string(),
        MetaValue::F32(x) => format!("{x}"),
        MetaValue::F64(x) => format!("{x}"),
        MetaValue::Bool(x) => x.to_string(),
        MetaValue::Str(s) => elide(s),
        MetaValue::Bytes(b) => format!("<{} bytes>", b.len()),
    }
}

fn meta_json(v: &MetaValue<'_>) -> serde_json::Value {
    match v {
        MetaValue::U64(x) => json!(x),
        MetaValue::I64(x) => json!(x),
        MetaValue::F32(x) => json!(x),
        MetaValue::F64(x) => json!(x),
        MetaValue::Bool(x) => json!(x),
        MetaValue::Str(s) if s.chars().count() <= MAX_SHOWN => json!(s),
        MetaValue::Str(s) => json!({ "type": "str", "chars": s.chars().count(), "elided": true }),
        MetaValue::Bytes(b) => json!({ "type": "bytes", "bytes": b.len() }),
    }
}

fn parse_for_inspect<'a>(path: &Path, bytes: &'a [u8]) -> Result<Checkpoint<'a>> {
    Checkpoint::parse(bytes).map_err(|e| {
        if let Error::BadMagic { .. } = e {
            if let Ok(fmt) = edge_pack::detect_format(path) {
                if fmt != edge_pack::SourceFormat::Edge {
                    return anyhow!(
                        "{} is a {} model, not an .edge checkpoint; pack it with `edge-pack` (or run it with `edge-run --model`, which packs it into a cache)",
                        path.display(),
                        loader::format_name(fmt)
                    );
                }
            }
        }
        anyhow!("{}: {e}", path.display())
    })
}

/// The sensitivity profile as a table: one row per unit, one column per view, KL in nats/token.
fn profile_lines(p: &Profile) -> Vec<String> {
    let mut out = vec![format!(
        "sensitivity profile: mean {} (nats/token) from the {} when only that unit is lowered{}{}",
        p.metric.as_deref().unwrap_or("kl").to_uppercase(),
        p.reference.as_deref().unwrap_or("8-bit view"),
        p.calibration.as_deref().map(|c| format!("; calibration: {c}")).unwrap_or_default(),
        p.tokens.map(|t| format!(" ({t} tokens)")).unwrap_or_default(),
    )];
    let views: Vec<u8> = p.views().into_iter().filter(|&b| b != 8).collect();
    let nw = p.units.iter().map(|u| u.name.len()).max().unwrap_or(4).max(5);
    let mut head = format!("  {:<nw$}", "unit");
    for b in &views {
        head.push_str(&format!("  {:>10}", format!("{b}-bit")));
    }
    out.push(head);
    let mut totals = vec![0.0f64; views.len()];
    for u in &p.units {
        let mut l = format!("  {:<nw$}", u.name);
        for (i, &b) in views.iter().enumerate() {
            match u.kl_at(b) {
                Some(k) => {
                    totals[i] += k;
                    l.push_str(&format!("  {k:>10.6}"));
                }
                None => l.push_str(&format!("  {:>10}", "-")),
            }
        }
        out.push(l);
    }
    let mut l = format!("  {:<nw$}", "sum");
    for t in totals {
        l.push_str(&format!("  {t:>10.6}"));
    }
    out.push(l);
    out
}

#[derive(Default)]
struct Totals {
    tensors: usize,
    params: u64,
    bytes: u64,
}

pub fn run(args: &InspectArgs) -> Result<()> {
    let path = args
        .model
        .as_deref()
        .or(args.model_opt.as_deref())
        .ok_or_else(|| anyhow!("no checkpoint given; usage: edge-run inspect MODEL.edge"))?;
    if !path.exists() {
        bail!("checkpoint '{}' does not exist", path.display());
    }
    if path.is_dir() {
        bail!(
            "'{}' is a folder, not an .edge checkpoint; pack it with `edge-pack` (or run it with `edge-run --model`)",
            path.display()
        );
    }
    if matches!(edge_pack::detect_format(path), Ok(edge_pack::SourceFormat::Gguf)) {
        if args.verify {
            bail!("'{}' is a GGUF file, which holds no checksums to verify; --verify checks .edge checkpoints", path.display());
        }
        return crate::inspect_gguf::run(path, args.json);
    }
    let bytes = loader::open_bytes(path, !args.no_mmap)?;
    let ck = parse_for_inspect(path, bytes.as_bytes())?;
    let file_len = bytes.as_bytes().len() as u64;
    let config = Config::from_checkpoint(&ck);
    let tok = Tok::from_checkpoint(&ck);
    let profile = Profile::from_checkpoint(&ck);
    let baseline = Baseline::from_checkpoint(&ck);

    // Segment checksums: all of them, or those the --bits view reads (a nested tensor's
    // planes beyond the view's are skipped).
    let n_segments: usize = ck.tensors.iter().map(|t| t.segments.len()).sum();
    let mut failed: Vec<String> = Vec::new();
    let (mut checked, mut checked_bytes) = (0usize, 0u64);
    if args.verify {
        for t in &ck.tensors {
            let planes_read = match (t.encoding, args.bits) {
                (Encoding::Nested8 | Encoding::Nested8Super, Some(b)) => edge_runtime::blocks::nested8_planes_for_view(b).unwrap_or(6),
                _ => usize::MAX,
            };
            let mut plane = 0;
            for (i, s) in t.segments.iter().enumerate() {
                if s.kind == SegmentKind::Plane {
                    plane += 1;
                    if plane > planes_read {
                        continue;
                    }
                }
                checked += 1;
                checked_bytes += s.bytes.len() as u64;
                if s.verify(t.name, i).is_err() {
                    failed.push(format!("tensor '{}' segment {i} ({:?})", t.name, s.kind));
                }
            }
            // Values that checksums pass but no model runs on (a writer that stored NaN).
            if let Ok(Some(i)) = t.first_non_finite() {
                failed.push(format!("tensor '{}' holds a NaN or infinite value (index {i})", t.name));
            }
        }
    }
    let scope = match args.bits {
        Some(b) => format!(" read by the {b}-bit view ({} of {n_segments}, {})", checked, human_bytes(checked_bytes)),
        None => String::new(),
    };

    let mut totals: BTreeMap<&str, Totals> = BTreeMap::new();
    for t in &ck.tensors {
        let e = totals.entry(t.encoding.name()).or_default();
        e.tensors += 1;
        e.params += t.numel();
        e.bytes += t.nbytes();
    }
    let total_params: u64 = totals.values().map(|t| t.params).sum();
    let total_bytes: u64 = totals.values().map(|t| t.bytes).sum();
    let seg_status = if !args.verify {
        "segments not checked (use --verify)".to_string()
    } else if failed.is_empty() {
        match args.bits {
            None => format!("all {n_segments} segments OK"),
            Some(_) => format!("all segments{scope} OK"),
        }
    } else {
        format!("{} of {checked} segments{scope} FAILED", failed.len())
    };

    if args.json {
        let tok_json = match &tok {
            Ok(Some(t)) => json!({
                "present": true,
                "vocab_size": t.tk.get_vocab_size(true),
                "bos_id": t.bos,
                "bos": t.bos.and_then(|i| t.tk.id_to_token(i)),
                "eos_id": t.eos,
                "eos": t.eos.and_then(|i| t.tk.id_to_token(i)),
                "add_bos": t.add_bos,
                "chat_template": t.chat_template.is_some(),
            }),
            Ok(None) => json!({ "present": false }),
            Err(e) => json!({ "present": true, "error": one_line(&format!("{e:#}")) }),
        };
        let obj = json!({
            "file": path.display().to_string(),
            "file_bytes": file_len,
            "format_version": ck.version,
            "architecture": ck.get_str(keys::ARCH),
            "name": ck.get_str(keys::NAME),
            "config": config.as_ref().ok().map(crate::report::config_json),
            "config_error": config.as_ref().err().map(|e| e.to_string()),
            "tokenizer": tok_json,
            "metadata": ck.meta.iter().map(|(k, v)| (k.to_string(), meta_json(v))).collect::<serde_json::Map<_, _>>(),
            "sensitivity_profile": match &profile {
                Ok(Some(p)) => serde_json::to_value(p).unwrap_or_default(),
                Ok(None) => serde_json::Value::Null,
                Err(e) => json!({ "error": one_line(&format!("{e:#}")) }),
            },
            "baseline": match &baseline {
                Ok(Some(b)) => serde_json::to_value(b).unwrap_or_default(),
                Ok(None) => serde_json::Value::Null,
                Err(e) => json!({ "error": one_line(&format!("{e:#}")) }),
            },
            "n_tensors": ck.tensors.len(),
            "params": total_params,
            "tensor_bytes": total_bytes,
            "tensors": ck.tensors.iter().map(|t| json!({
                "name": t.name,
                "shape": t.shape,
                "encoding": t.encoding.name(),
                "group_size": t.group_size,
                "bytes": t.nbytes(),
                "segments": t.segments.len(),
            })).collect::<Vec<_>>(),
            "totals": totals.iter().map(|(k, v)| (k.to_string(), json!({
                "tensors": v.tensors, "params": v.params, "bytes": v.bytes,
            }))).collect::<serde_json::Map<_, _>>(),
            "checksums": {
                "header": "ok",
                "metadata": "ok",
                "tensor_table": "ok",
                "segments": if !args.verify { "not checked" } else if failed.is_empty() { "ok" } else { "failed" },
                "segments_total": n_segments,
                "segments_checked": checked,
                "bytes_checked": checked_bytes,
                "view_bits": args.bits,
                "failed": failed,
            },
        });
        let _ = writeln!(std::io::stdout().lock(), "{obj}");
    } else {
        let mut o = String::new();
        let mut line = |s: String| {
            o.push_str(&s);
            o.push('\n');
        };
        line(format!("file          {} ({}, {file_len} bytes)", path.display(), human_bytes(file_len)));
        line(format!(
            "format        .edge version {}, {} metadata entries, {} tensors, {n_segments} segments",
            ck.version,
            ck.meta.len(),
            ck.tensors.len()
        ));
        line(format!("checksums     header, metadata, tensor table OK; {seg_status}"));
        for f in &failed {
            line(format!("  FAILED      {f}"));
        }
        if let Some(n) = ck.get_str(keys::NAME) {
            line(format!("name          {n}"));
        }
        line(format!("architecture  {}", ck.get_str(keys::ARCH).unwrap_or("(none)")));
        match &config {
            Ok(c) => {
                line(format!(
                    "config        dim {}, ffn {}, layers {}, heads {} (kv {}), head_dim {}, vocab {}",
                    c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size
                ));
                line(format!(
                    "              context {}, rms_eps {:e}, rope_theta {}{}, tied embeddings {}",
                    c.max_seq_len,
                    c.norm_eps,
                    c.rope_theta,
                    if c.rope_freq_factors { " with per-frequency factors (Llama 3 scaling)" } else { "" },
                    if c.tied_embeddings { "yes" } else { "no" }
                ));
            }
            Err(e) => line(format!("config        unreadable: {e}")),
        }
        match &tok {
            Ok(Some(t)) => {
                let name = |i: Option<u32>| match i {
                    Some(i) => format!("{i} {:?}", t.tk.id_to_token(i).unwrap_or_default()),
                    None => "none".into(),
                };
                line(format!(
                    "tokenizer     yes: vocab {}, bos {}, eos {}, add_bos {}, chat template {}",
                    t.tk.get_vocab_size(true),
                    name(t.bos),
                    name(t.eos),
                    match t.add_bos {
                        Some(b) => b.to_string(),
                        None => "unset".into(),
                    },
                    if t.chat_template.is_some() { "yes" } else { "no" }
                ));
            }
            Ok(None) => line("tokenizer     none (generate with --prompt-ids)".into()),
            Err(e) => line(format!("tokenizer     present but unusable: {}", one_line(&format!("{e:#}")))),
        }
        line("metadata".into());
        let kw = ck.meta.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &ck.meta {
            line(format!("  {k:<kw$}  {}", meta_text(v)));
        }
        match &profile {
            Ok(Some(p)) => {
                for l in profile_lines(p) {
                    line(l);
                }
            }
            Ok(None) => {}
            Err(e) => line(format!("sensitivity   unreadable: {}", one_line(&format!("{e:#}")))),
        }
        match &baseline {
            Ok(Some(b)) => line(format!(
                "baseline      {} {}-bit{}, weights {} ({} bytes stored at that width)",
                b.method,
                b.bits,
                b.group_size.map(|g| format!(", group {g}")).unwrap_or_default(),
                human_bytes(b.weight_bytes),
                b.weight_bytes
            )),
            Ok(None) => {}
            Err(e) => line(format!("baseline      unreadable: {}", one_line(&format!("{e:#}")))),
        }
        line(format!("tensors ({})", ck.tensors.len()));
        let nw = ck.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
        line(format!("  {:<nw$}  {:<14}  {:<8}  {:>5}  {:>12}", "name", "shape", "encoding", "group", "bytes"));
        for t in &ck.tensors {
            let shape = t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" x ");
            let group = if t.group_size > 0 { t.group_size.to_string() } else { "-".into() };
            line(format!(
                "  {:<nw$}  {:<14}  {:<8}  {:>5}  {:>12}",
                t.name,
                shape,
                t.encoding.name(),
                group,
                t.nbytes()
            ));
        }
        line("totals by encoding".into());
        for (k, v) in &totals {
            line(format!(
                "  {k:<8}  {:>4} tensors  {:>12} params  {:>12} bytes ({})",
                v.tensors,
                v.params,
                v.bytes,
                human_bytes(v.bytes)
            ));
        }
        line(format!(
            "  {:<8}  {:>4} tensors  {:>12} params  {:>12} bytes ({})",
            "total",
            ck.tensors.len(),
            total_params,
            total_bytes,
            human_bytes(total_bytes)
        ));
        let _ = std::io::stdout().lock().write_all(o.as_bytes());
    }

    if !failed.is_empty() {
        let more = if failed.len() > 3 { format!(" and {} more", failed.len() - 3) } else { String::new() };
        bail!(
            "checksum mismatch in {} of {checked} segments{scope}: {}{more}; the file is corrupt, re-pack or re-copy it",
            failed.len(),
            failed.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}
