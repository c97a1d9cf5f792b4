//! Every way of rewriting a log, checked against a checkpoint held outside it: each is
//! caught and the first bad record named.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers: a panic is a test failure"
)]

use mandate_audit::check::LogCheck;
use mandate_audit::merkle::{Frontier, Hash, from_hex};
use mandate_audit::note::{Checkpoint, NoteSigner};
use mandate_audit::{Body, Event, GENESIS_HASH, JoinTokenIssued, NewEvent, link};

fn new_event(i: i64) -> NewEvent {
    NewEvent {
        ts_ms: 1_000 + i,
        agent: Some("bot".into()),
        task_id: Some("tsk_1".into()),
        body: Body::JoinTokenIssued(JoinTokenIssued { expires_at_ms: i }),
    }
}

/// Re-links `events` from the first one on, as an attacker with write access would:
/// every hash recomputed, sequence numbers renumbered.
fn relink(events: Vec<NewEvent>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for e in events {
        let (seq, prev) = out
            .last()
            .map_or((0, GENESIS_HASH.to_owned()), |l| (l.seq, l.hash.clone()));
        out.push(link(e, seq, &prev));
    }
    out
}

fn log(n: i64) -> Vec<Event> {
    relink((1..=n).map(new_event).collect())
}

fn raw(events: &[Event]) -> Vec<Hash> {
    events.iter().map(|e| from_hex(&e.hash).unwrap()).collect()
}

fn checkpoint(events: &[Event], size: usize) -> Checkpoint {
    let mut t = Frontier::new();
    for e in &events[..size] {
        t.push(mandate_audit::check::record_leaf(e).unwrap());
    }
    Checkpoint {
        origin: "test/audit".into(),
        size: size as u64,
        root: t.root(),
    }
}

/// What the check says of `events` (with the head an attacker left pointing at the last
/// record, or at `head` if given).
fn check(events: &[Event], cps: &[Checkpoint], witnessed: &[Hash]) -> Result<i64, i64> {
    let mut c = LogCheck::new(cps.to_vec(), witnessed.to_vec()).unwrap();
    for e in events {
        c.feed(e).map_err(|b| b.seq)?;
    }
    let head = events
        .last()
        .map_or((0, GENESIS_HASH), |e| (e.seq, e.hash.as_str()));
    c.finish(Some(head)).map_err(|b| b.seq)
}

#[test]
fn an_untouched_log_passes_its_checkpoints() {
    let good = log(20);
    let cps = [checkpoint(&good, 8), checkpoint(&good, 20)];
    assert_eq!(check(&good, &cps, &raw(&good)), Ok(20));
    assert_eq!(check(&good, &cps, &[]), Ok(20));
    // And the checkpoints survive signing and reading.
    let k = NoteSigner::generate("test/audit").unwrap();
    let note = cps[1].sign(&k).unwrap();
    assert_eq!(Checkpoint::open(&note, &k.verifier()).unwrap(), cps[1]);
}

#[test]
fn every_rewrite_is_caught_and_the_first_bad_record_named() {
    let good = log(20);
    let cps = [checkpoint(&good, 8), checkpoint(&good, 20)];
    let kept = raw(&good);
    let plain = |i: i64| new_event(i);

    // An edit, without recomputing: the chain names it.
    let mut edited = good.clone();
    edited[4].data = serde_json::json!({"expires_at_ms": 99});
    assert_eq!(check(&edited, &cps, &kept), Err(5));

    // A deletion, a reordering: the chain names them.
    let mut deleted = good.clone();
    deleted.remove(4);
    assert_eq!(check(&deleted, &cps, &kept), Err(5));
    let mut swapped = good.clone();
    swapped.swap(4, 5);
    assert_eq!(check(&swapped, &cps, &kept), Err(5));

    // A full recompute after an edit of record 12: every hash and the head agree, only
    // the checkpoint can tell; the witnessed hashes name the record.
    let mut bodies: Vec<NewEvent> = (1..=20).map(plain).collect();
    bodies[11].ts_ms += 1;
    let recomputed = relink(bodies);
    assert_eq!(check(&recomputed, &cps, &kept), Err(12));
    assert_eq!(
        check(&recomputed, &cps, &[]),
        Err(9),
        "without the witness's hashes: the first record past the last matching checkpoint"
    );

    // Deleting record 3 and recomputing everything after it.
    let mut bodies: Vec<NewEvent> = (1..=20).map(plain).collect();
    bodies.remove(2);
    assert_eq!(check(&relink(bodies), &cps, &kept), Err(3));

    // Reordering two records and recomputing.
    let mut bodies: Vec<NewEvent> = (1..=20).map(plain).collect();
    bodies.swap(15, 16);
    assert_eq!(check(&relink(bodies), &cps, &kept), Err(16));

    // Truncating the tail and moving the head back to the new last record.
    let truncated = good[..15].to_vec();
    assert_eq!(check(&truncated, &cps, &kept), Err(16));
    assert_eq!(check(&truncated, &cps, &[]), Err(16));

    // Truncating, then appending forged records so the size is back to 20.
    let mut bodies: Vec<NewEvent> = (1..=15).map(plain).collect();
    bodies.extend((100..105).map(plain));
    assert_eq!(check(&relink(bodies), &cps, &kept), Err(16));

    // Appending a forged record without moving the head: the head names it.
    let mut appended = good.clone();
    let extra = link(plain(21), 20, &good[19].hash);
    appended.push(extra);
    let mut c = LogCheck::new(cps.to_vec(), kept.clone()).unwrap();
    for e in &appended {
        c.feed(e).unwrap();
    }
    assert_eq!(c.finish(Some((20, &good[19].hash))).unwrap_err().seq, 21);
}

#[test]
fn a_forked_key_or_an_altered_witness_copy_is_refused() {
    let good = log(10);
    let other = relink((50..60).map(new_event).collect());
    let fork = [checkpoint(&good, 10), checkpoint(&other, 10)];
    assert!(
        LogCheck::new(fork.to_vec(), Vec::new())
            .unwrap_err()
            .contains("forked")
    );
    let mut kept = raw(&good);
    kept[3][0] ^= 1;
    assert!(
        LogCheck::new(vec![checkpoint(&good, 10)], kept)
            .unwrap_err()
            .contains("altered")
    );
}
