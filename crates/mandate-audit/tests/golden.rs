//! Golden files for every event kind: the example body of each kind, linked as the first
//! record of a chain, must serialise to exactly the committed file (its stored details and
//! its hash), and read back as the same typed body. A change to an event's shape shows
//! up here as a diff to review. Regenerate with
//! `MANDATE_UPDATE_GOLDEN=1 cargo test -p mandate-audit --test golden`.

#![expect(
    clippy::disallowed_methods,
    reason = "the regeneration switch is read from the environment"
)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use mandate_audit::{ALL_KINDS, GENESIS_HASH, NewEvent, example, link};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn every_kind_has_one_example_of_its_own_kind_and_a_unique_name() {
    let names: BTreeSet<&str> = ALL_KINDS.iter().map(|k| k.as_str()).collect();
    assert_eq!(names.len(), ALL_KINDS.len(), "kind names are unique");
    for kind in ALL_KINDS {
        assert_eq!(
            example(kind).kind(),
            kind,
            "the example of {kind} is a {kind}"
        );
    }
}

#[test]
fn every_event_kind_matches_its_golden_file() {
    let update = std::env::var_os("MANDATE_UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for kind in ALL_KINDS {
        let event = link(
            NewEvent {
                ts_ms: 1_700_000_000_000,
                agent: Some("billing-bot".into()),
                task_id: Some("tsk_1".into()),
                body: example(kind),
            },
            0,
            GENESIS_HASH,
        );
        assert_eq!(
            event.body().expect("a stored body reads back"),
            example(kind),
            "{kind} round-trips through its stored form"
        );
        // Keys sorted (as the chain hashes them), whatever serde_json's features in this
        // build: the file is the same under `-p mandate-audit` and the whole workspace.
        let sorted: serde_json::Value = serde_json::from_str(&mandate_core::canonical_json(
            &serde_json::to_value(&event).unwrap(),
        ))
        .unwrap();
        let text = serde_json::to_string_pretty(&sorted).unwrap() + "\n";
        let path = golden_dir().join(format!("{}.json", kind.as_str()));
        if update {
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(kind.as_str());
        }
    }
    assert!(
        stale.is_empty(),
        "the stored form of {stale:?} differs from tests/golden: review the change, then regenerate with MANDATE_UPDATE_GOLDEN=1"
    );
    let files = std::fs::read_dir(golden_dir()).unwrap().count();
    assert_eq!(
        files,
        ALL_KINDS.len(),
        "one golden file per kind, and no stale ones"
    );
}

#[test]
fn a_body_that_does_not_fit_its_kind_is_an_error_naming_the_record() {
    let mut event = link(
        NewEvent {
            ts_ms: 1,
            agent: None,
            task_id: None,
            body: example(mandate_audit::EventKind::Decision),
        },
        0,
        GENESIS_HASH,
    );
    event.data = serde_json::json!({ "decision_id": 7 });
    let e = event.body().unwrap_err();
    assert_eq!(e.seq, 1);
    assert!(e.to_string().contains("decision"), "{e}");
}
