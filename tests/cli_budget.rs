//! `--budget SIZE`: the whole process planned to fit a memory budget (weights from the
//! sensitivity profile, KV format, prefill batch and context), on SmolLM2 packed as q8 with a
//! synthetic profile. The process's own peak RSS (VmHWM, `peak_rss_bytes`) must stay within
//! the budget, and the predicted and measured KL fall as it grows.

mod common;

use common::*;

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

fn budget_run(model: &std::path::Path, budget: u64) -> serde_json::Value {
    greedy_json(model, "Once upon a time", 32, &["--budget", &format!("{budget}B")])
}

#[test]
fn budgets_from_the_smallest_run_to_f16_kv_and_8_bit_weights_fit() {
    if !have_models() {
        return;
    }
    let m = smollm_q8_profiled();

    // Below the smallest run: one line naming the minimum.
    let e = run([
        "-m",
        m.to_str().unwrap(),
        "-p",
        "Hi",
        "-n",
        "2",
        "--budget",
        "20MB",
    ])
    .one_line_error();
    assert!(e.contains("is below the smallest run of this model"), "{e}");
    let min: u64 = e.split(" bytes: ").next().unwrap().rsplit('(').next().unwrap().parse().unwrap();

    // A budget no plan needs all of: f16 KV at ctx 2048, batch 64, every unit at 8 bits.
    let full = budget_run(&m, 4 << 30);
    let b = &full["budget"];
    assert_eq!(b["kv"], "f16");
    assert_eq!(u(&b["ctx"]), 2048);
    assert!(b["lowered"].as_array().unwrap().is_empty());
    assert!((full["plan"]["bits_per_weight"].as_f64().unwrap() - 8.5).abs() < 0.2, "{}", full["plan"]);
    let max = u(&b["total_bytes"]);
    assert!(min < max);

    // Six budgets from the smallest run (startup memory varies a little from run to run: a few
    // MiB above the minimum) to f16 KV with 8-bit weights, each generating 256 tokens.
    let lo = min + (4 << 20);
    let mut kls: Vec<(f64, f64)> = Vec::new();
    let w = scratch().join(format!("budget-kl-{}.txt", std::process::id()));
    // KL is measured on the first 24 KB of the evaluation text: 3 windows of 256.
    let text = std::fs::read(wiki_test()).unwrap();
    std::fs::write(&w, &text[..24_000]).unwrap();
    eprintln!("budget       weights      bits/w  KV     ctx   batch  peak RSS     predicted KL  measured KL  decode tok/s");
    const STEPS: u64 = 6;
    for k in 0..STEPS {
        // The last is the full run's total with 8 MiB to spare for startup memory's spread.
        let budget = lo + k * (max + (8 << 20) - lo) / (STEPS - 1);
        let v = greedy_json(&m, "Once upon a time", 256, &["--budget", &format!("{budget}B"), "--ignore-eos"]);
        let b = &v["budget"];
        let weights = u(&v["weight_bytes"]);
        let peak = u(&v["peak_rss_bytes"]);
        assert_eq!(v["plan"]["source"], "budget");
        assert_eq!(u(&b["weight_bytes"]), weights);
        assert!(weights <= u(&b["weight_allowance_bytes"]));
        // The plan's predictions are what the built model holds.
        assert_eq!(u(&v["kv_cache_bytes"]), u(&b["kv_bytes"]));
        assert_eq!(u(&v["state_bytes"]), u(&b["state_bytes"]) + u(&b["kv_bytes"]));
        assert_eq!(u(&v["ctx"]), u(&b["ctx"]));
        assert_eq!(u(&v["batch_size"]), u(&b["batch"]));
        assert!(u(&b["total_bytes"]) <= budget);
        assert!(peak <= budget, "peak RSS {peak} over the budget {budget}: {b}");
        let room = u(&b["ctx"]) - u(&v["n_prompt_tokens"]);
        assert_eq!(u(&v["n_generated"]), 256.min(room));
        // No step was needed: nothing squeezed this run.
        assert!(v["memory_control"]["events"].as_array().unwrap().is_empty(), "{}", v["memory_control"]);
        assert!(b["plan_ms"].as_f64().unwrap() >= 0.0);

        // The plan's measured KL against the 8-bit model with the f16 cache.
        let plan = scratch().join(format!("budget-plan-{}-{k}.toml", std::process::id()));
        let views: Vec<String> =
            v["plan"]["views"].as_object().unwrap().iter().map(|(n, bits)| format!("\"{n}\" = {bits}")).collect();
        std::fs::write(&plan, format!("[views]\n{}\n", views.join("\n"))).unwrap();
        let kv = b["kv"].as_str().unwrap().trim_start_matches("int").replace("f16", "16");
        let e = run([
            "eval", "-m", m.to_str().unwrap(), "--plan", plan.to_str().unwrap(), "--kv-bits", &kv,
            "--kl-base", m.to_str().unwrap(), "--data", w.to_str().unwrap(), "--ctx", "256", "--chunks", "3", "--json",
        ])
        .json();
        let measured = e["kl"]["mean_kl"].as_f64().unwrap();
        let predicted = v["plan"]["predicted_kl"].as_f64().unwrap() + v["budget"]["kv_kl"].as_f64().unwrap_or(0.0);
        eprintln!(
            "{budget:>11}  {weights:>11}  {:.3}   {:<5}  {:>4}  {:>5}  {peak:>11}  {predicted:>12.4}  {measured:>11.4}  {:>12.1}",
            v["plan"]["bits_per_weight"].as_f64().unwrap(),
            b["kv"].as_str().unwrap(),
            u(&b["ctx"]),
            u(&b["batch"]),
            v["decode"]["tokens_per_second"].as_f64().unwrap_or(0.0)
        );
        kls.push((predicted, measured));
        let _ = std::fs::remove_file(plan);
    }
    let _ = std::fs::remove_file(w);
    // Both fall as the budget grows (measured: never up by more than noise), and far down end
    // to end.
    for pair in kls.windows(2) {
        let ((p0, m0), (p1, m1)) = (pair[0], pair[1]);
        assert!(p1 <= p0 + 1e-9, "predicted KL rose with the budget: {kls:?}");
        assert!(m1 <= m0 * 1.1 + 2e-3, "measured KL rose with the budget: {kls:?}");
    }
    let (first, last) = (kls[0], kls[kls.len() - 1]);
    assert!(last.0 < first.0 / 10.0 && last.1 < first.1 / 10.0, "{kls:?}");
}

#[test]
fn a_user_ctx_that_cannot_fit_names_the_largest_that_does() {
    if !have_models() {
        return;
    }
    let m = smollm_q8_profiled();
    let e = run(["-m", m.to_str().unwrap(), "-p", "Hi", "-n", "2", "--budget", "150MB", "--ctx", "8192"]).one_line_error();
    assert!(e.contains("the largest context that fits is --ctx "), "{e}");
}

#[test]
fn budget_conflicts_with_the_weight_flags() {
    for flag in [["--bits", "4"], ["--weight-budget", "90MB"], ["--plan", "x.toml"]] {
        let r = run(["-m", "x.edge", "-p", "Hi", "--budget", "150MB", flag[0], flag[1]]);
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains("cannot be used with"), "{}", r.stderr);
    }
}

#[test]
fn bench_and_eval_take_a_budget_and_measure_its_plan() {
    if !have_models() {
        return;
    }
    let m = smollm_q8_profiled();
    let ms = m.to_str().unwrap();
    let v = run(["bench", "-m", ms, "--budget", "200MB", "-p", "16", "-n", "4", "-r", "1", "--json"]).json();
    let r = &v["results"][0];
    assert_eq!(r["plan"]["source"], "budget", "{r}");
    assert!(r["view"].as_str().unwrap().starts_with("budget "), "{r}");
    assert!(r["peak_rss_bytes"].as_u64().unwrap() <= 200_000_000, "{r}");
    // The bench's context (16 tokens) leaves more for the weights than generate's default 2048.
    let g = greedy_json(&m, "Hi", 4, &["--budget", "200MB"]);
    assert!(r["weight_bytes"].as_u64() >= g["weight_bytes"].as_u64(), "{} against {}", r["weight_bytes"], g["weight_bytes"]);

    let w = scratch().join(format!("budget-eval-{}.txt", std::process::id()));
    std::fs::write(&w, &std::fs::read(wiki_test()).unwrap()[..8_000]).unwrap();
    let e = run(["eval", "-m", ms, "--budget", "200MB", "--data", w.to_str().unwrap(), "--ctx", "256", "--json"]).json();
    assert_eq!(e["plan"]["source"], "budget");
    assert_eq!(u(&e["budget"]["ctx"]), 256, "{}", e["budget"]);
    assert!(e["ppl"].as_f64().unwrap().is_finite());
    // A budget below the smallest run is the same one-line error in every command.
    for cmd in [vec!["bench", "-m", ms, "--budget", "20MB", "-p", "8", "-n", "0"], vec!["eval", "-m", ms, "--budget", "20MB", "--data", w.to_str().unwrap()]] {
        let e = run(cmd).one_line_error();
        assert!(e.contains("is below the smallest run of this model"), "{e}");
    }
    let _ = std::fs::remove_file(w);
}
