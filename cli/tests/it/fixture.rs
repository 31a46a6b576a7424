//! A tokenizer and a tiny model built once by the real CLI and shared by the tests.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub fn hh_data() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/hh-rlhf/harmless-base-test.jsonl.gz");
    assert!(p.exists(), "shared HH-RLHF data missing at {}", p.display());
    p
}

/// The first `n` lines of the shared HH file, as a plain JSONL file.
pub fn hh_subset(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("hh-subset.jsonl");
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(
        std::fs::File::open(hh_data()).unwrap(),
    ));
    let mut out = std::fs::File::create(&path).unwrap();
    for line in reader.lines().take(n) {
        writeln!(out, "{}", line.unwrap()).unwrap();
    }
    path
}

/// The binary under test, with one libtorch thread (tests run in parallel).
pub fn rrlhf() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rrlhf"));
    cmd.env("OMP_NUM_THREADS", "1");
    cmd
}

pub fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "command failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `rrlhf model logprobs --model MODEL` fed `input` on stdin.
pub fn logprobs(model: &Path, input: &[u8]) -> Output {
    let mut child = rrlhf()
        .args(["model", "logprobs", "--model"])
        .arg(model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

pub struct Fixture {
    _root: tempfile::TempDir,
    pub tokenizer: PathBuf,
    pub model: PathBuf,
}

/// `rrlhf tokenizer train` on the shared data, then `rrlhf model init --size tiny`.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let tokenizer = root.path().join("tok");
        let model = root.path().join("model");
        let out = rrlhf()
            .args(["tokenizer", "train", "--vocab-size", "512", "--data"])
            .arg(hh_data())
            .arg("--out")
            .arg(&tokenizer)
            .output()
            .unwrap();
        assert!(ok(out).contains("512 tokens"));
        let out = rrlhf()
            .args([
                "model",
                "init",
                "--arch",
                "llama",
                "--size",
                "tiny",
                "--seed",
                "3",
                "--tokenizer",
            ])
            .arg(&tokenizer)
            .arg("--out")
            .arg(&model)
            .output()
            .unwrap();
        ok(out);
        Fixture {
            _root: root,
            tokenizer,
            model,
        }
    })
}

/// `rrlhf sft` of the fixture's model on the shared HH data with `args`, writing to `out`;
/// returns stdout and the `sft_summary.json` it wrote.
pub fn sft(args: &[&str], out: &Path) -> (String, serde_json::Value) {
    sft_of(&fixture().model, args, out)
}

/// `rrlhf sft` of `model` on the shared HH data with `args`, writing to `out`.
pub fn sft_of(model: &Path, args: &[&str], out: &Path) -> (String, serde_json::Value) {
    let output = rrlhf()
        .arg("sft")
        .args(args)
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(hh_data())
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stdout = ok(output);
    let summary = std::fs::read_to_string(out.join("sft_summary.json")).unwrap();
    (stdout, serde_json::from_str(&summary).unwrap())
}
