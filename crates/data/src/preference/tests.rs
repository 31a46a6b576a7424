//! Tests of [`super`]: every format, the skip reasons, malformed records and the real HH file.

use std::io::Write;

use super::*;

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

fn gz_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    let mut enc = flate2::write::GzEncoder::new(f.reopen().unwrap(), Default::default());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap();
    f
}

fn load(f: &tempfile::NamedTempFile) -> Result<PairData> {
    load_pairs(f.path(), &PairOptions::default())
}

fn skip_malformed() -> PairOptions {
    PairOptions {
        on_malformed: OnMalformed::Skip,
        ..PairOptions::default()
    }
}

/// The error message of loading `text`, which must contain `path:line:` and `needle`.
fn assert_malformed(text: &str, line: usize, needle: &str) {
    let f = file(text);
    let e = load(&f).unwrap_err();
    assert!(matches!(e, DataError::Malformed { .. }), "{e:?}");
    let e = e.to_string();
    let at = format!("{}:{line}:", f.path().display());
    assert!(e.contains(&at) && e.contains(needle), "{e}");
}

const HH: &str = concat!(
    // A multi-turn pair: the prompt keeps the earlier turns.
    r#"{"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: see you", "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: go away"}"#,
    "\n\n",
    r#"{"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}"#,
    "\n",
    r#"{"chosen": "\n\nHuman: a\n\nAssistant: same", "rejected": "\n\nHuman: a\n\nAssistant: same "}"#,
    "\n",
    r#"{"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: a"}"#,
    "\n",
    r#"{"chosen": "\n\nHuman: a\n\nAssistant:  ", "rejected": "\n\nHuman: a\n\nAssistant: y"}"#,
    "\n",
);

#[test]
fn hh_pairs_share_their_prompt() {
    for f in [file(HH), gz_file(HH)] {
        let d = load(&f).unwrap();
        assert_eq!(
            d.pairs,
            vec![PreferencePair {
                prompt: "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant:".into(),
                chosen: " see you".into(),
                rejected: " go away".into(),
                category: None,
            }]
        );
        let expected = SkipCounts {
            prompt_mismatch: 1,
            identical_responses: 1,
            no_response: 2,
            ..SkipCounts::default()
        };
        assert_eq!(d.skipped, expected);
        assert_eq!(d.skipped.total(), 4);
    }
}

#[test]
fn generic_pairs_keep_their_category() {
    let f = file(concat!(
        r#"{"prompt": "2+2=", "chosen": "4", "rejected": "5", "category": "math"}"#,
        "\n",
        r#"{"prompt": "q", "chosen": "a", "rejected": "b", "category": null}"#,
        "\n",
        r#"{"prompt": "q", "chosen": " same", "rejected": "same\n"}"#,
        "\n",
        r#"{"prompt": "q", "chosen": "a", "rejected": ""}"#,
        "\n",
    ));
    let d = load(&f).unwrap();
    assert_eq!(d.pairs.len(), 2);
    assert_eq!(d.pairs[0].category.as_deref(), Some("math"));
    assert_eq!(
        (d.pairs[0].chosen.as_str(), d.pairs[0].rejected.as_str()),
        ("4", "5")
    );
    assert_eq!(d.pairs[1].category, None);
    assert_eq!(d.skipped.identical_responses, 1);
    assert_eq!(d.skipped.no_response, 1);
    assert_eq!(d.skipped.total(), 2);
}

#[test]
fn rated_completions_pair_at_the_gap() {
    // Ratings 5, 8, 6, 6 with gap 2: 8 beats 6 (exactly the gap, twice) and 5; the tie 6–6 and
    // the gaps of 1 (5–6 twice) are below it.
    let f = file(concat!(
        r#"{"instruction": "write", "source": "evol", "completions": ["#,
        r#"{"response": "e", "overall_score": 5}, {"response": "a", "overall_score": 8.0},"#,
        r#"{"text": "b", "rating": 6, "model": "m"}, {"response": "c", "score": 6.0}]}"#,
        "\n",
    ));
    let d = load(&f).unwrap();
    let got: Vec<_> = d
        .pairs
        .iter()
        .map(|p| (p.chosen.as_str(), p.rejected.as_str()))
        .collect();
    assert_eq!(got, [("a", "e"), ("a", "b"), ("a", "c")]);
    assert!(d.pairs.iter().all(|p| p.prompt == "write"));
    assert!(
        d.pairs
            .iter()
            .all(|p| p.category.as_deref() == Some("evol"))
    );
    assert_eq!(d.skipped.below_rating_gap, 3);
    assert_eq!(d.skipped.total(), 3);

    // Looser gap: all five unequal pairs, never the tie.
    let opts = PairOptions {
        min_rating_gap: 0.0,
        ..PairOptions::default()
    };
    let d = load_pairs(f.path(), &opts).unwrap();
    assert_eq!(d.pairs.len(), 5);
    assert_eq!(d.skipped.below_rating_gap, 1);
}

#[test]
fn rated_edge_cases() {
    let f = file(concat!(
        // A decimal gap exactly at the threshold survives binary rounding (0.3 − 0.1 < 0.2).
        r#"{"prompt": "p", "category": "c", "source": "s", "completions": ["#,
        r#"{"text": "x", "score": 0.1}, {"text": "y", "score": 0.3}]}"#,
        "\n",
        // Just below it does not.
        r#"{"prompt": "p", "completions": [{"text": "x", "score": 0.1}, {"text": "y", "score": 0.29}]}"#,
        "\n",
        // Same text under different ratings, a blank completion, too few completions.
        r#"{"prompt": "p", "completions": [{"text": "x", "score": 9}, {"text": "x ", "score": 1}]}"#,
        "\n",
        r#"{"prompt": "p", "completions": [{"text": " ", "score": 9}, {"text": "x", "score": 1}]}"#,
        "\n",
        r#"{"prompt": "p", "completions": [{"text": "x", "score": 9}]}"#,
        "\n",
        r#"{"prompt": "p", "completions": []}"#,
        "\n",
    ));
    let opts = PairOptions {
        min_rating_gap: 0.2,
        ..PairOptions::default()
    };
    let d = load_pairs(f.path(), &opts).unwrap();
    assert_eq!(d.pairs.len(), 1);
    assert_eq!(d.pairs[0].chosen, "y");
    assert_eq!(
        d.pairs[0].category.as_deref(),
        Some("c"),
        "category beats source"
    );
    let expected = SkipCounts {
        identical_responses: 1,
        no_response: 1,
        below_rating_gap: 1,
        ..SkipCounts::default()
    };
    assert_eq!(d.skipped, expected);
}

#[test]
fn formats_mix_within_a_gzip_file() {
    let text = [
        HH.lines().next().unwrap(),
        r#"{"prompt": "q", "chosen": "a", "rejected": "b"}"#,
        r#"{"instruction": "i", "completions": [{"response": "r", "overall_score": 1}, {"response": "s", "overall_score": 4}]}"#,
    ]
    .join("\n");
    let d = load(&gz_file(&text)).unwrap();
    let prompts: Vec<_> = d.pairs.iter().map(|p| p.prompt.as_str()).collect();
    assert_eq!(prompts.len(), 3);
    assert!(prompts[0].ends_with("bye\n\nAssistant:"));
    assert_eq!(prompts[1..], ["q", "i"]);
    assert_eq!(d.skipped.total(), 0);
}

#[test]
fn malformed_records_are_named() {
    let good = r#"{"prompt": "q", "chosen": "a", "rejected": "b"}"#;
    assert_malformed(&format!("{good}\n{{not json\n"), 2, "invalid JSON");
    assert_malformed(&format!("{good}\n\n[1, 2]\n"), 3, "expected a JSON object");
    assert_malformed(r#"{"chosen": 3, "rejected": "b"}"#, 1, "`chosen`");
    assert_malformed(
        r#"{"chosen": "\n\nHuman: a\n\nAssistant: b"}"#,
        1,
        "`rejected`",
    );
    assert_malformed(
        r#"{"prompt": "q", "chosen": "a"}"#,
        1,
        "`rejected` is missing",
    );
    assert_malformed(r#"{"question": "q"}"#, 1, "expected `chosen`+`rejected`");
    assert_malformed(r#"{"completions": []}"#, 1, "`prompt` is missing");
    assert_malformed(r#"{"prompt": "p", "completions": {}}"#, 1, "`completions`");
    assert_malformed(
        r#"{"prompt": "p", "completions": [3]}"#,
        1,
        "`completions[0]`",
    );
    let no_rating = r#"{"prompt": "p", "completions": [{"text": "a", "score": 1}, {"text": "b"}]}"#;
    assert_malformed(no_rating, 1, "`completions[1]` has no rating");
    let bad_rating = r#"{"prompt": "p", "completions": [{"text": "a", "rating": "5"}]}"#;
    assert_malformed(bad_rating, 1, "`completions[0].rating` must be a number");
    let no_text = r#"{"prompt": "p", "completions": [{"score": 5}]}"#;
    assert_malformed(no_text, 1, "no `response` or `text`");
    let bad_source = r#"{"prompt": "p", "source": 1, "completions": []}"#;
    assert_malformed(bad_source, 1, "`source`");
}

#[test]
fn skipped_malformed_records_are_counted_and_leave_nothing() {
    let f = file(concat!(
        r#"{"prompt": "q", "chosen": "a", "rejected": "b"}"#,
        "\n{not json\n",
        // Its first two completions would pair, but the record as a whole is malformed.
        r#"{"prompt": "p", "completions": [{"text": "a", "score": 9}, {"text": "b", "score": 1}, {"text": "c"}]}"#,
        "\n",
        r#"{"chosen": 1}"#,
        "\n",
    ));
    let d = load_pairs(f.path(), &skip_malformed()).unwrap();
    assert_eq!(d.pairs.len(), 1);
    assert_eq!(d.skipped.malformed, 3);
    assert_eq!(d.skipped.total(), 3);
    let json = serde_json::to_value(&d.skipped).unwrap();
    assert_eq!(json["malformed"], 3);
}

#[test]
fn unusable_files_and_options_are_errors() {
    let f = file("{not json\n\n");
    let e = load_pairs(f.path(), &skip_malformed()).unwrap_err();
    assert!(matches!(e, DataError::Unusable { .. }), "{e:?}");
    assert!(e.to_string().contains("malformed: 1"), "{e}");
    let empty = file("\n  \n");
    assert!(matches!(load(&empty), Err(DataError::Unusable { .. })));
    let good = file(r#"{"prompt": "q", "chosen": "a", "rejected": "b"}"#);
    for gap in [f64::NAN, f64::INFINITY, -1.0] {
        let opts = PairOptions {
            min_rating_gap: gap,
            ..PairOptions::default()
        };
        let e = load_pairs(good.path(), &opts).unwrap_err().to_string();
        assert!(e.contains("min_rating_gap"), "{e}");
    }
}

/// The Anthropic HH-RLHF harmless-base test split, read in place from the shared data folder.
#[test]
fn real_hh_file_accounts_for_every_line() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
    ));
    assert!(
        path.exists(),
        "shared HH-RLHF data missing at {}",
        path.display()
    );
    let d = load_pairs(path, &PairOptions::default()).unwrap();
    eprintln!("{} pairs, skipped {:?}", d.pairs.len(), d.skipped);
    assert_eq!(d.pairs.len() + d.skipped.total(), 2_312);
    // Cross-checked with an independent Python reading of the same file.
    let expected = SkipCounts {
        prompt_mismatch: 5,
        no_response: 4,
        ..SkipCounts::default()
    };
    assert_eq!((d.pairs.len(), &d.skipped), (2_303, &expected));
    for p in &d.pairs {
        assert!(p.prompt.ends_with("\n\nAssistant:"), "{:?}", p.prompt);
        assert!(p.chosen != p.rejected && p.category.is_none());
    }
}
