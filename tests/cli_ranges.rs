//! Issue 20's limits: every number flag is refused outside its range in one line (exit 1, no
//! panic, ending with the subcommand's help hint); token ids the model does not have name the
//! id, its position and the vocabulary; and a place an output cannot be written fails before the
//! work whose results it would hold.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Bad values of each subcommand's number flags, with what the line must say. They are refused
/// while the arguments are parsed, so the model need not exist.
#[test]
fn every_number_flag_is_refused_outside_its_range() {
    let m = "/nonexistent/model.edge";
    let gen = |extra: &[&'static str]| -> Vec<&'static str> { [&["-m", m, "-p", "hi"][..], extra].concat() };
    let eval = |extra: &[&'static str]| -> Vec<&'static str> { [&["eval", "-m", m, "-d", "x.txt"][..], extra].concat() };
    let bench = |extra: &[&'static str]| -> Vec<&'static str> { [&["bench", "-m", m][..], extra].concat() };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // generate
        (gen(&["-n", "-2"]), "'-2' is not a number of tokens; give a whole number from 0 to 16777216, or -1"),
        (gen(&["-n", "99999999999999999999"]), "is not a number of tokens"),
        (gen(&["--ctx", "0"]), "'0' is not a context size; give a whole number from 1 to 16777216"),
        (gen(&["--ctx", "-5"]), "'-5' is not a context size"),
        (gen(&["--temp", "NaN"]), "'NaN' is not a temperature"),
        (gen(&["--temp", "-0.5"]), "'-0.5' is not a temperature"),
        (gen(&["--temp", "inf"]), "'inf' is not a temperature"),
        (gen(&["--top-p", "0"]), "'0' is not a probability; give a number above 0 and at most 1"),
        (gen(&["--top-p", "1.5"]), "'1.5' is not a probability"),
        (gen(&["--top-p", "nan"]), "'nan' is not a probability"),
        (gen(&["--top-k", "-1"]), "'-1' is not a top-k; give a whole number from 0 to 4294967295 (0 = every token)"),
        (gen(&["--seed", "-1"]), "'-1' is not a seed; give a whole number from 0 to 18446744073709551615"),
        (gen(&["--seed", "x"]), "'x' is not a seed"),
        (gen(&["-t", "0"]), "'0' is not a thread count; give a whole number from 1 to 1024"),
        (gen(&["-t", "100000"]), "'100000' is not a thread count"),
        (gen(&["-b", "0"]), "'0' is not a batch size"),
        (gen(&["--budget", "0"]), "'0' is not a size"),
        (gen(&["--budget", "12XB"]), "unknown unit 'XB'"),
        (gen(&["--weight-budget", "-5MB"]), "'-5MB' is not a size"),
        (gen(&["--power", "0"]), "'0' is not a power in watts"),
        (gen(&["--power", "-3W"]), "'-3W' is not a power in watts"),
        (gen(&["--bits", "7"]), "'7' is not a view width; choose 2, 3, 4, 5, 6 or 8"),
        (gen(&["--bits", "-8"]), "'-8' is not a view width"),
        (gen(&["--target-bits", "nan"]), "'nan' is not an average bit width"),
        (gen(&["--group-size", "0"]), "group size 0 is invalid: it must be a positive multiple of 8"),
        (gen(&["--group-size", "12"]), "group size 12 is invalid"),
        (gen(&["--kv-window", "0"]), "'0' is not a window size"),
        (gen(&["--kv-window", "8", "--kv-sink", "-1"]), "'-1' is not a number of positions"),
        (gen(&["--kv-bits", "7"]), "--kv-bits"),
        // eval
        (eval(&["--ctx", "2"]), "'2' is not a window size; give a whole number from 4 to 16777216 tokens"),
        (eval(&["--chunks", "0"]), "'0' is not a number of windows"),
        (eval(&["-b", "-1"]), "'-1' is not a batch size"),
        (eval(&["--kl-base", m, "--kl-base-bits", "1"]), "'1' is not a view width"),
        (eval(&["--sweep", "--kl-base", m, "--budgets", "3,nan"]), "'nan' is not an average bit width"),
        (eval(&["--sweep", "--kl-base", m, "--byte-budgets", "0"]), "'0' is not a size"),
        (eval(&["-t", "-2"]), "'-2' is not a thread count"),
        // bench
        (bench(&["-p", "-5"]), "'-5' is not a number of tokens; give a whole number from 0 to 16777216 (0 skips it)"),
        (bench(&["-n", "x"]), "'x' is not a number of tokens"),
        (bench(&["-d", "99999999"]), "'99999999' is not a number of tokens"),
        (bench(&["-r", "0"]), "'0' is not a number of repetitions; give a whole number from 1 to 1000"),
        (bench(&["-t", "1,0"]), "'0' is not a thread count"),
        (bench(&["--bits", "8,9"]), "'9' is not a view width"),
        (bench(&["--group-size", "-64"]), "group size -64 is invalid"),
        // inspect
        (vec!["inspect", m, "--verify", "--bits", "0"], "'0' is not a view width"),
    ];
    for (args, want) in &cases {
        let r = run(args);
        let line = r.one_line_error();
        assert!(line.contains(want), "{args:?}: {line}");
        let help = match args[0] {
            sub @ ("eval" | "bench" | "inspect") => format!("see `edge-run {sub} --help`"),
            _ => "see `edge-run --help`".into(),
        };
        assert!(line.ends_with(&help), "{args:?}: {line}");
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
    }
}

/// A --token-ids file with `ids`.
fn ids_file(name: &str, ids: &str) -> PathBuf {
    let p = scratch().join(format!("{name}-{}.txt", std::process::id()));
    std::fs::write(&p, ids).unwrap();
    p
}

#[test]
fn token_ids_the_model_does_not_have_name_the_id_its_position_and_the_vocabulary() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let m = m.to_str().unwrap();
    // --prompt-ids: out of range (also beyond 32 bits), negative, not a number.
    for (ids, want) in [
        ("1 99999999", "--prompt-ids: token id 99999999 at position 2 is out of range for the model's vocabulary of 49152 tokens (ids 0 to 49151)"),
        ("1,2,49152", "token id 49152 at position 3 is out of range for the model's vocabulary of 49152 tokens"),
        ("5 99999999999999999999999", "token id 99999999999999999999999 at position 2 is out of range"),
        ("-3", "--prompt-ids: token id -3 at position 1 is negative; ids run from 0 to 49151"),
        ("1 2 abc", "--prompt-ids: 'abc' at position 3 is not a token id"),
    ] {
        let line = run(["-m", m, "--prompt-ids", ids, "-n", "1"]).one_line_error();
        assert!(line.contains(want), "{ids}: {line}");
        assert!(!line.contains("tokenizer"), "an id given by the user is not the tokenizer's fault: {line}");
    }
    // eval --token-ids: the file is named, and the id's place in it; the same for --logits-out.
    for (ids, want) in [
        ("[1, 2, 3, 70000, 5, 6, 7, 8]", "token id 70000 at position 4 is out of range for the model's vocabulary of 49152 tokens (ids 0 to 49151)"),
        ("1 2 -7 4", "token id -7 at position 3 is negative"),
        ("1 2 3 4.5", "'4.5' at position 4 is not a token id"),
    ] {
        let f = ids_file("bad-ids", ids);
        let fs = f.to_str().unwrap();
        let line = run(["eval", "-m", m, "--token-ids", "-d", fs, "--ctx", "4"]).one_line_error();
        assert!(line.contains(fs) && line.contains(want), "{ids}: {line}");
        assert!(!line.contains("tokenizer"), "{line}");
        let out = scratch().join(format!("never-{}.npy", std::process::id()));
        let line = run(["eval", "-m", m, "--token-ids", "-d", fs, "--logits-out", out.to_str().unwrap()]).one_line_error();
        assert!(line.contains(fs) && line.contains(want), "{ids}: {line}");
        assert!(!out.exists());
        let _ = std::fs::remove_file(&f);
    }
}

/// A read-only folder (a read-only tmpfs mount: root writes through permission bits), or None
/// where nothing can be mounted; unmounted on drop.
struct ReadOnly(tempfile::TempDir);

impl ReadOnly {
    fn mount() -> Option<ReadOnly> {
        let d = tempfile::tempdir().unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"]).arg(d.path()).status().is_ok_and(|s| s.success());
        ok.then_some(ReadOnly(d))
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// The line of a run refused before any work: the error alone on stderr (no "N tokens in FILE",
/// no progress, no packing), nothing on stdout.
fn refused_up_front(args: &[&str]) -> String {
    let r = run(args);
    let line = r.one_line_error();
    assert_eq!(r.stderr.lines().count(), 1, "work was done before the refusal:\n{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    line
}

#[test]
fn an_output_place_that_cannot_be_written_fails_before_the_work() {
    if !have_models() {
        return;
    }
    let (q8, f16) = (smollm_q8(), smollm_f16());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"precious").unwrap();
    let w = wiki_test();
    let sweep = |out: &Path| -> Vec<String> {
        ["eval", "--sweep", "-m", q8.to_str().unwrap(), "--kl-base", f16.to_str().unwrap(), "-d", w.to_str().unwrap(), "--chunks", "4", "--out", out.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let sweep_err = |out: &Path| {
        let args = sweep(out);
        refused_up_front(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // eval --sweep --out: a file, a folder below a file, a folder where sweep.json goes.
    let line = sweep_err(&file);
    assert!(line.contains("--out") && line.contains("is a file, not a folder") && line.contains("give a folder"), "{line}");
    let line = sweep_err(&file.join("sub"));
    assert!(line.contains("cannot be created") && line.contains("is a file, not a folder"), "{line}");
    let blocked = dir.path().join("blocked");
    std::fs::create_dir_all(blocked.join("sweep.json")).unwrap();
    let line = sweep_err(&blocked);
    assert!(line.contains("holds a folder named") && line.contains("sweep.json"), "{line}");
    // eval --logits-out: a missing folder, a folder.
    let (q8s, ws) = (q8.to_str().unwrap(), w.to_str().unwrap());
    let missing = dir.path().join("no/such/logits.npy");
    let line = refused_up_front(&["eval", "-m", q8s, "-d", ws, "--logits-out", missing.to_str().unwrap()]);
    assert!(line.contains("does not exist") && line.contains("create"), "{line}");
    let line = refused_up_front(&["eval", "-m", q8s, "-d", ws, "--logits-out", dir.path().to_str().unwrap()]);
    assert!(line.contains("is a folder"), "{line}");
    // bench --energy: a file.
    let line = refused_up_front(&["bench", "-m", q8s, "--energy", file.to_str().unwrap()]);
    assert!(line.contains("--energy") && line.contains("is a file, not a folder"), "{line}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");

    // A read-only file system, as an SD card remounted read-only after errors would be.
    match ReadOnly::mount() {
        None => eprintln!("SKIPPED: cannot mount a read-only tmpfs here (not root?); the read-only case is untested"),
        Some(ro) => {
            let line = sweep_err(ro.path());
            assert!(line.contains("cannot write in --out") && line.contains("Read-only file system") && line.contains("writable folder"), "{line}");
            let line = sweep_err(&ro.path().join("new/sub"));
            assert!(line.contains("cannot be created") && line.contains("Read-only file system"), "{line}");
            let npy = ro.path().join("logits.npy");
            let line = refused_up_front(&["eval", "-m", q8s, "-d", ws, "--logits-out", npy.to_str().unwrap()]);
            assert!(line.contains("cannot write --logits-out") && line.contains("Read-only file system"), "{line}");
            assert_eq!(std::fs::read_dir(ro.path()).unwrap().count(), 0);
        }
    }
    // Nothing was written anywhere: no sweep files, no temporary files.
    let mut left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["a-file", "blocked"]);
}
