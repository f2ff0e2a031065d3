//! Crashes of the real binary and damage to its journal: `kill -9` under load, a torn last record, a
//! damaged record with intact ones after it, and `pixelhub repair-journal`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::process::{HubApi, HubProcess};

const TOKEN: &str = "crash-test-token-0123456789";

/// The hub's API, with what these tests do through it.
struct Api(HubApi);

impl std::ops::Deref for Api {
    type Target = HubApi;

    fn deref(&self) -> &HubApi {
        &self.0
    }
}

impl Api {
    fn of(hub: &HubProcess) -> Self {
        Api(HubApi::of(hub, TOKEN))
    }

    async fn put_brand(&self) {
        let (status, body) = self
            .call(reqwest::Method::PUT, "/api/v1/brands/b1", Some(json!({})))
            .await;
        assert!(status.is_success(), "{body}");
    }

    /// Queues one image pixel with id `id`; the status, or `None` when no answer came.
    async fn queue(&self, player: &str, id: &str) -> Option<StatusCode> {
        let pixel = json!({"kind": "image", "url": format!("https://aff.example/{id}"), "id": id});
        self.answer(reqwest::Method::POST, player, Some(pixel))
            .await
    }

    async fn purge(&self, player: &str) -> Option<StatusCode> {
        self.answer(reqwest::Method::DELETE, player, None).await
    }

    /// The status of a call on the player's pixels, or `None` when no answer came (a kill).
    async fn answer(
        &self,
        method: reqwest::Method,
        player: &str,
        body: Option<Value>,
    ) -> Option<StatusCode> {
        let mut request = self.request(
            method,
            &format!("/api/v1/brands/b1/players/{player}/pixels"),
        );
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.ok().map(|r| r.status())
    }

    async fn depth(&self) -> u64 {
        let (_, stats) = self.call(reqwest::Method::GET, "/api/v1/stats", None).await;
        stats["queue_depth"].as_u64().unwrap()
    }
}

/// Small journal segments, so rounds also cross segment boundaries.
const SETTINGS: &[(&str, &str)] = &[("PIXELHUB_JOURNAL_SEGMENT_MB", "1")];

fn start(dir: &Path) -> HubProcess {
    HubProcess::start_with("127.0.0.1:0", dir, Some(TOKEN), false, SETTINGS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kill_9_rounds_under_load_keep_every_202_and_every_purge_answered() {
    let dir = tempfile::tempdir().unwrap();
    // A player per writer and round, so none reaches the queue cap.
    let mut players: Vec<String> = Vec::new();
    // Every pixel answered 202, per player; every player whose purge was answered 200 (nothing queued
    // for it after).
    let mut kept: Vec<(String, String)> = Vec::new();
    let mut purged: Vec<String> = Vec::new();
    // Every player queued to for a purge, purged or not (a kill may fall between the two).
    let tried = Arc::new(Mutex::new(Vec::new()));
    for round in 0..20u32 {
        let hub = start(dir.path());
        let api = Arc::new(Api::of(&hub));
        if round == 0 {
            api.put_brand().await;
        }
        // What the previous rounds were told is there, and nothing they purged is.
        for player in &players {
            let pending = api.pending(player).await;
            for (_, id) in kept.iter().filter(|(p, _)| p == player) {
                assert!(pending.contains(id), "round {round}: {id} of {player} lost");
            }
        }
        for player in &purged {
            assert!(api.pending(player).await.is_empty(), "{player} came back");
        }

        let answered = Arc::new(Mutex::new(Vec::new()));
        let purges = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (api, answered, purges) = (api.clone(), answered.clone(), purges.clone());
                let tried = tried.clone();
                let player = format!("w{w}-r{round}");
                tokio::spawn(async move {
                    for n in 0.. {
                        let id = format!("r{round}-w{w}-{n}");
                        match api.queue(&player, &id).await {
                            Some(StatusCode::ACCEPTED) => {
                                answered.lock().unwrap().push((player.clone(), id))
                            }
                            Some(other) => panic!("{other}"),
                            None => return,
                        }
                        if n % 10 == 0 {
                            // A player of its own, queued and then purged.
                            let gone = format!("gone-r{round}-w{w}-{n}");
                            tried.lock().unwrap().push(gone.clone());
                            if api.queue(&gone, "x").await != Some(StatusCode::ACCEPTED) {
                                return;
                            }
                            match api.purge(&gone).await {
                                Some(StatusCode::OK) => purges.lock().unwrap().push(gone),
                                _ => return,
                            }
                        }
                    }
                })
            })
            .collect();
        // Different moments of the load (0.15 to 2.4 s in), so kills land in syncs, rotations and
        // checkpoints (one a second under load, in slices) alike.
        tokio::time::sleep(Duration::from_millis(150 + 118 * u64::from(round))).await;
        hub.kill_9();
        for writer in writers {
            writer.await.unwrap();
        }
        let answered = std::mem::take(&mut *answered.lock().unwrap());
        assert!(!answered.is_empty(), "round {round} queued nothing");
        players.extend((0..8).map(|w| format!("w{w}-r{round}")));
        kept.extend(answered);
        purged.extend(std::mem::take(&mut *purges.lock().unwrap()));
    }

    let hub = start(dir.path());
    let api = Api::of(&hub);
    let mut total = 0;
    for player in &players {
        let pending = api.pending(player).await;
        for (_, id) in kept.iter().filter(|(p, _)| p == player) {
            assert!(pending.contains(id), "{id} of {player} lost");
        }
        total += pending.len() as u64;
    }
    let tried = tried.lock().unwrap().clone();
    for player in &tried {
        total += api.pending(player).await.len() as u64;
    }
    assert!(
        kept.len() > 100,
        "{} pixels answered in 20 rounds",
        kept.len()
    );
    // The derived counts agree with the queues after every crash.
    assert_eq!(api.depth().await, total);
}

/// The data dir's journal segments, oldest first.
fn segments(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("sled").join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "journal"))
        .collect();
    files.sort();
    files
}

/// Where each record of a segment starts, and where the last one ends.
fn frames(bytes: &[u8]) -> (Vec<usize>, usize) {
    let mut at = 16; // the segment header
    let mut starts = Vec::new();
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) & 0x7fff_ffff;
        if len == 0 {
            break;
        }
        starts.push(at);
        at += 8 + len as usize;
    }
    (starts, at)
}

/// Writes `bytes` over the file at `path` from byte `at`, as a crash or a bad disk would.
fn write_at(path: &Path, at: usize, bytes: &[u8]) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, bytes, at as u64).unwrap();
}

/// Queues `n` pixels to player `p` and kills the hub at once (before a checkpoint would run).
async fn queue_and_kill(dir: &Path, n: usize) -> Vec<String> {
    let hub = start(dir);
    let api = Api::of(&hub);
    api.put_brand().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("px-{i}");
        assert_eq!(api.queue("p", &id).await, Some(StatusCode::ACCEPTED));
        ids.push(id);
    }
    hub.kill_9();
    ids
}

#[tokio::test]
async fn a_torn_last_record_is_dropped_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let ids = queue_and_kill(dir.path(), 5).await;
    // The crash cut a write short: a frame that says 200 bytes and holds 10.
    let segment = segments(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let (_, end) = frames(&bytes);
    let mut torn = vec![0xab, 0xcd, 0xef, 0x01];
    torn.extend_from_slice(&200u32.to_le_bytes());
    torn.extend_from_slice(&[7u8; 10]);
    write_at(&segment, end, &torn);

    let mut hub = start(dir.path());
    assert!(
        hub.lines()
            .iter()
            .any(|l| l.contains("cleared a torn last write"))
    );
    assert_eq!(Api::of(&hub).pending("p").await, ids);
}

#[tokio::test]
async fn a_damaged_record_before_intact_ones_stops_the_start_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let ids = queue_and_kill(dir.path(), 5).await;
    let segment = segments(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let (starts, _) = frames(&bytes);
    // The brand, then one record per pixel: damage the third pixel's record, in its payload.
    let victim = starts[starts.len() - 3];
    let mut damaged = bytes[victim + 20];
    damaged ^= 0xff;
    write_at(&segment, victim + 20, &[damaged]);

    // It refuses to start, naming the file and the byte, and the command that repairs.
    let mut refused =
        HubProcess::spawn_raw(dir.path(), &[("PIXELHUB_ADMIN_TOKEN", TOKEN), SETTINGS[0]]);
    let status = refused
        .wait_exit(Duration::from_secs(20))
        .expect("it exits");
    assert!(!status.success());
    let said = refused.lines().join("\n");
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(said.contains(name), "{said}");
    assert!(said.contains(&format!("at byte {victim}")), "{said}");
    assert!(
        said.contains("pixelhub repair-journal --data-dir"),
        "{said}"
    );

    // Repaired while stopped, with a report of what was dropped.
    let repair = std::process::Command::new(env!("CARGO_BIN_EXE_pixelhub"))
        .args(["repair-journal", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&repair.stdout);
    assert!(repair.status.success(), "{report}");
    assert!(report.contains(&format!("at byte {victim} of")), "{report}");
    assert!(report.contains(name), "{report}");

    // It starts; the damaged record's pixel is what was dropped, every other is there.
    let hub = start(dir.path());
    let pending = Api::of(&hub).pending("p").await;
    let mut expected = ids.clone();
    expected.remove(ids.len() - 3);
    assert!(
        pending == expected || pending == ids,
        "dropped at most the damaged record's pixel: {pending:?}"
    );
}

#[tokio::test]
async fn repair_refuses_to_run_beside_a_running_hub() {
    let dir = tempfile::tempdir().unwrap();
    let _hub = start(dir.path());
    let repair = std::process::Command::new(env!("CARGO_BIN_EXE_pixelhub"))
        .args(["repair-journal", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!repair.status.success());
    let said = String::from_utf8_lossy(&repair.stderr);
    assert!(said.contains("a hub is running"), "{said}");
}
