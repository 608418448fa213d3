//! `edge-run bench` on the real stories260K (packed once as nested8 and as f16) and SmolLM2:
//! the table's and the JSON document's fields, and one-line errors.

mod common;

use common::*;

/// stories260K packed as nested8 (group 32): every view exists. Packed once per test binary
/// (tests run in parallel threads of one process, so they would share the temporary name).
fn stories_q8() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(stories_q8_pack).clone()
}

fn stories_q8_pack() -> std::path::PathBuf {
    packed_once("stories260K-q8-bench.edge", |tmp| {
        let opts = edge_pack::PackOptions {
            encoding: edge_pack::WeightEncoding::Nested8,
            group_size: 32,
            objective: edge_pack::quant::NestedObjective::MinMax,
            allow_no_tokenizer: true,
            force: true,
            ..Default::default()
        };
        edge_pack::pack_file(&stories_bin(), tmp, &opts).expect("packing stories260K as q8");
    })
}

#[test]
fn json_has_a_row_per_view_thread_count_and_test() {
    if !have_models() {
        return;
    }
    let m = stories_q8();
    let v = run(["bench", "-m", m.to_str().unwrap(), "--bits", "8,2", "-t", "1,2", "-p", "32", "-n", "8", "-r", "2", "--json"]).json();
    assert_eq!(v["n_prompt"], 32);
    assert_eq!(v["n_gen"], 8);
    assert_eq!(v["repetitions"], 2);
    if cfg!(target_os = "linux") {
        assert!(v["load_average_1m"]["before"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(v["name"], "stories260K");
    assert!(!v["kernels"].as_str().unwrap().is_empty());
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 2 * 2, "views x threads x tests");
    let mut seen = Vec::new();
    for r in rows {
        let view = r["view"].as_str().unwrap().to_string();
        let threads = r["threads"].as_u64().unwrap();
        let test = r["test"].as_str().unwrap().to_string();
        assert!(["8-bit", "2-bit"].contains(&view.as_str()), "{view}");
        assert!([1, 2].contains(&threads));
        assert!(["pp32", "tg8"].contains(&test.as_str()), "{test}");
        assert_eq!(r["n_tokens"].as_u64().unwrap(), if test == "pp32" { 32 } else { 8 });
        let tps = &r["tokens_per_second"];
        let samples = tps["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 2);
        let (min, med, max) = (tps["min"].as_f64().unwrap(), tps["median"].as_f64().unwrap(), tps["max"].as_f64().unwrap());
        assert!(min > 0.0 && min <= med && med <= max, "{tps}");
        assert!(tps["stddev"].as_f64().unwrap() >= 0.0);
        assert!(r["weight_bytes"].as_u64().unwrap() > 0);
        // stories260K ties its head to the embedding: a token reads every weight.
        assert_eq!(r["decode_bytes"], r["weight_bytes"]);
        assert_eq!(r["plan"]["decode_bytes"], r["decode_bytes"]);
        let read = &r["read_gb_per_s"];
        if test.starts_with("tg") {
            let want = r["decode_bytes"].as_f64().unwrap() * med / 1e9;
            assert!((read.as_f64().unwrap() - want).abs() <= 1e-9 * want, "{read} vs {want}");
        } else {
            assert!(read.is_null(), "{read}");
        }
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
        seen.push((view, threads, test));
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 8, "every combination once");
    // The 2-bit view reads fewer bytes than the 8-bit one.
    let bytes = |view: &str| rows.iter().find(|r| r["view"] == view).unwrap()["weight_bytes"].as_u64().unwrap();
    assert!(bytes("2-bit") < bytes("8-bit"));
}

#[test]
fn table_is_markdown_with_the_columns() {
    if !have_models() {
        return;
    }
    let m = stories_q8();
    let r = run(["bench", "-m", m.to_str().unwrap(), "--bits", "4", "-t", "2", "-p", "16", "-n", "4", "-r", "1"]);
    r.ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "header, rule, pp and tg rows:\n{}", r.stdout);
    let cells = |l: &str| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>();
    assert_eq!(
        cells(lines[0]),
        ["model", "view", "bits/w", "weights", "KV", "KV/token", "kernels", "threads", "test", "t/s", "peak RSS", "read/token", "read GB/s"]
    );
    assert!(lines[1].starts_with("|--") && lines[1].ends_with(":|"), "{}", lines[1]);
    let pp = cells(lines[2]);
    assert_eq!(pp[0], "stories260K");
    assert_eq!(pp[1], "4-bit");
    assert!(pp[3].ends_with(" MiB"));
    assert_eq!(pp[4], "f16");
    assert!(pp[5].ends_with(" KiB"), "{pp:?}");
    assert_eq!(pp[7], "2");
    assert_eq!(pp[8], "pp16");
    let (med, sd) = pp[9].split_once(" ± ").expect("median ± stddev");
    assert!(med.parse::<f64>().unwrap() > 0.0 && sd.parse::<f64>().unwrap() >= 0.0);
    assert!(pp[11].ends_with(" MiB") && pp[12].is_empty(), "{pp:?}");
    let tg = cells(lines[3]);
    assert_eq!(tg[8], "tg4");
    assert!(tg[12].parse::<f64>().unwrap() > 0.0, "{tg:?}");
    // Progress and the header line go to stderr, never into the table.
    for l in r.stderr.lines() {
        assert!(l.starts_with("edge-run: "), "{l}");
    }
}

#[test]
fn dense_checkpoint_and_skipped_test() {
    if !have_models() {
        return;
    }
    // A llama2.c file is packed (as f16) into the cache; -n 0 skips the decode test.
    let bin = stories_bin();
    let args = ["bench", "-m", bin.to_str().unwrap(), "--pack-encoding", "f16", "-p", "8", "-n", "0", "-r", "1", "-t", "1", "--json"];
    let v = run(args).json();
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["test"], "pp8");
    assert_eq!(rows[0]["view"], "f16");
}

#[test]
fn smollm_decode_runs_on_two_threads() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let v = run(["bench", "-m", m.to_str().unwrap(), "-t", "2", "-p", "8", "-n", "4", "-r", "1", "--json"]).json();
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows[0]["weight_bytes"].as_u64().unwrap() > 200 << 20);
}

#[test]
fn bad_input_is_one_line() {
    if !have_models() {
        return;
    }
    let m = stories_q8();
    let m = m.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["bench", "-m", m, "-r", "0"], "is not a number of repetitions; give a whole number from 1 to 1000"),
        (&["bench", "-m", m, "-p", "600"], "exceeds the model's context of 512"),
        (&["bench", "-m", m, "-n", "513"], "exceeds the model's context of 512"),
        (&["bench", "-m", m, "--bits", "8,7"], "not a view width"),
        (&["bench", "-m", m, "-t", "0"], "is not a thread count; give a whole number from 1 to 1024"),
        (&["bench", "-m", m, "-p", "0", "-n", "0"], "nothing to measure"),
        (&["bench", "-m", "/nonexistent/model.edge"], "does not exist"),
    ];
    for (args, want) in cases {
        let line = run(*args).one_line_error();
        assert!(line.contains(want), "{args:?}: {line}");
    }
    let bin = stories_bin();
    let line = run(["bench", "-m", bin.to_str().unwrap(), "--pack-encoding", "f16", "--bits", "4"]).one_line_error();
    assert!(line.contains("nested-plane"), "{line}");
}
