//! A full disk, on the real binary with its data dir on a small tmpfs: growing writes refused before the
//! disk fills while reads and deletes go on, recovery without a restart when space returns; and a disk
//! filled by someone else, which stops the hub cleanly (never a hang) and loses nothing acknowledged.
//! Mounting needs root; elsewhere each test says why it is skipped and passes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::process::{HubApi, HubProcess};

const TOKEN: &str = "disk-full-token-0123456789";

/// A tmpfs mounted on a temp dir, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts `mb` megabytes; `None`, with the reason printed, where this process cannot mount.
    fn mount(mb: u64) -> Option<Self> {
        // SAFETY: geteuid(2) only reads the process's credentials.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a small tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "pixelhub-test"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(SmallDisk { dir }),
            Ok(out) => {
                eprintln!(
                    "skipped: mount failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: mount cannot run: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, mb: u64) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={mb}m")])
            .arg(self.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "the tmpfs can be resized");
    }

    /// Writes a file of another program's that leaves `mb` megabytes free (none if fewer are).
    fn leave_free(&self, mb: u64) {
        let free = fs2::available_space(self.path()).unwrap();
        let size = free.saturating_sub(mb << 20);
        let file = std::fs::File::create(self.path().join("someone-elses.tmp")).unwrap();
        std::io::Write::write_all(&mut &file, &vec![0u8; size as usize]).unwrap();
        file.sync_all().unwrap();
    }

    /// Fills every free byte with a file of another program's, as a log gone wild would; returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("someone-elses.log");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 1 << 20];
        while file.write_all(&block).is_ok() {}
        let _ = file.write_all(&[0u8; 4096]);
        while file.write_all(&[0u8]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// The hub on `disk`, with a free-space floor of `floor_mb`.
fn hub_on(disk: &SmallDisk, floor_mb: u64) -> HubProcess {
    HubProcess::start_with(
        "127.0.0.1:0",
        &disk.path().join("data"),
        Some(TOKEN),
        false,
        &[
            ("PIXELHUB_STORE_MIN_FREE_MB", &floor_mb.to_string()),
            ("PIXELHUB_STORE_CACHE_MB", "16"),
            ("PIXELHUB_JOURNAL_SEGMENT_MB", "1"),
            ("RUST_BACKTRACE", "0"),
        ],
    )
}

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

    /// Queues `n` 60 KB pixels for `player`; the answer's status and body.
    async fn queue(&self, player: &str, n: usize) -> (StatusCode, Value) {
        let pixels: Vec<Value> = (0..n)
            .map(|_| json!({"kind": "js", "code": "x".repeat(60_000)}))
            .collect();
        let path = format!("/api/v1/brands/b1/players/{player}/pixels");
        self.call(reqwest::Method::POST, &path, Some(Value::Array(pixels)))
            .await
    }

    /// A probe's status and body, answered within a second.
    async fn probe(&self, path: &str) -> (StatusCode, Value) {
        let started = Instant::now();
        let answer = self.call(reqwest::Method::GET, path, None).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path} took {:?}",
            started.elapsed()
        );
        answer
    }
}

/// Queues batches of 8 to new players until one is refused, each answered 202 or 507 whole; keeps the
/// ids accepted, and returns the refusal's body.
async fn fill_to_the_floor(api: &Api, accepted: &mut Vec<(String, Vec<String>)>) -> Value {
    loop {
        let player = format!("p{}", accepted.len());
        let (status, body) = api.queue(&player, 8).await;
        match status {
            StatusCode::ACCEPTED => {
                let ids = body["pixels"].as_array().unwrap().iter();
                accepted.push((
                    player,
                    ids.map(|p| p["id"].as_str().unwrap().to_owned()).collect(),
                ));
            }
            StatusCode::INSUFFICIENT_STORAGE => return body,
            other => panic!("{other}: {body}"),
        }
        assert!(accepted.len() < 400, "the floor was never reached");
    }
}

#[tokio::test]
async fn a_full_disk_refuses_growth_keeps_reads_and_recovers_by_itself() {
    let Some(disk) = SmallDisk::mount(64) else {
        return;
    };
    // A floor well above the 18 MB the store needs to open (16, and two 1 MB journal segments), so the
    // hub can also be restarted under it.
    let hub = hub_on(&disk, 32);
    let api = Api::of(&hub);
    api.call(
        reqwest::Method::PUT,
        "/api/v1/brands/b1",
        Some(json!({"allowed_kinds": ["js"]})),
    )
    .await;

    // Queue until the floor: every batch is answered 202 or 507, whole.
    let mut accepted: Vec<(String, Vec<String>)> = Vec::new();
    let refusal = fill_to_the_floor(&api, &mut accepted).await;
    assert_eq!(refusal["error"]["code"], "insufficient_storage");
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(message.contains("under the floor of 32.0 MB"), "{message}");
    assert!(
        accepted.len() > 10,
        "{} batches before the floor",
        accepted.len()
    );

    // Reads and deletes go on; readiness says why but keeps the hub in rotation; it is alive. (The floor
    // counts what the journal holds and sled does not yet, so a checkpoint can give back room: then
    // the hub takes writes again until the floor, and says so again.)
    assert_eq!(api.pending(&accepted[0].0).await, accepted[0].1);
    for round in 0.. {
        let (status, body) = api.probe("/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["status"] == "degraded" {
            assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
            break;
        }
        assert_eq!(body["status"], "ready", "{body}");
        assert!(round < 20, "readiness never said the store was full");
        fill_to_the_floor(&api, &mut accepted).await;
    }
    assert_eq!(api.probe("/healthz").await.0, StatusCode::OK);
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/brands/b1/players/{}/pixels", accepted[1].0),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "a purge frees what it can");
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pixelhub_store_writes_refused_total{reason=\"min_free\"}"),
        "counted"
    );

    // Restarted under the floor (a deploy, a crash), it comes back the same way: reads, no growth.
    // (The floor counts what the journal holds and sled does not yet, so it was met early; another
    // program takes the disk under it for certain, above the 18 MB the store needs to open.)
    let mut hub = hub;
    assert!(hub.terminate().0.success());
    disk.leave_free(26);
    let hub = hub_on(&disk, 32);
    let api = Api::of(&hub);
    assert_eq!(api.pending(&accepted[0].0).await, accepted[0].1);
    assert_eq!(
        api.queue("p-restarted", 1).await.0,
        StatusCode::INSUFFICIENT_STORAGE
    );

    // Room again: writes resume without a restart.
    disk.resize(128);
    let started = Instant::now();
    loop {
        let (status, body) = api.queue("after", 1).await;
        if status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "writes never resumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(api.probe("/readyz").await.0, StatusCode::OK);

    // Everything acknowledged is there after a restart.
    let mut hub = hub;
    let (status, _) = hub.terminate();
    assert!(status.success());
    let hub = hub_on(&disk, 32);
    let api = Api::of(&hub);
    for (player, ids) in accepted.iter().skip(2) {
        assert_eq!(&api.pending(player).await, ids, "{player}");
    }
}

#[tokio::test]
async fn a_disk_filled_by_someone_else_stops_the_hub_at_once_and_loses_nothing() {
    let Some(disk) = SmallDisk::mount(64) else {
        return;
    };
    let mut hub = hub_on(&disk, 8);
    let api = Api::of(&hub);
    api.call(
        reqwest::Method::PUT,
        "/api/v1/brands/b1",
        Some(json!({"allowed_kinds": ["js"]})),
    )
    .await;
    let mut accepted = Vec::new();
    for i in 0..40 {
        let player = format!("p{i}");
        let (status, body) = api.queue(&player, 4).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        accepted.push(player);
    }
    let filler = disk.fill();

    // The hub still takes deletes: the journal writes them into its zero-filled segment, so they
    // succeed until the next write that needs new room (the checkpoint into sled, within a second)
    // fails, and the store takes nothing more.
    let mut purged = Vec::new();
    let started = Instant::now();
    let failure = loop {
        // Half the players are purged, then the last of them again and again (writing nothing):
        // the other half keep what was acknowledged, checked at the end.
        let player = &accepted[purged.len().min(accepted.len() / 2)];
        let path = format!("/api/v1/brands/b1/players/{player}/pixels");
        let answer = api.request(reqwest::Method::DELETE, &path).send().await;
        match answer {
            Ok(answer) if answer.status() == StatusCode::OK => {
                if !purged.contains(player) {
                    purged.push(player.clone());
                }
            }
            Ok(answer) => {
                let status = answer.status();
                break Some((status, answer.json::<Value>().await.unwrap_or(Value::Null)));
            }
            // The failed checkpoint stopped the hub between two requests.
            Err(_) => break None,
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no write ever hit the full disk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Some((status, body)) = failure {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "store_unavailable");
    }
    let failed_at = Instant::now();

    // Never a hang: it says it is unhealthy, then stops by itself, non-zero.
    if let Ok(answer) = api.http.get(format!("{}/healthz", api.base)).send().await {
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let status = hub
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the hub stops by itself: {:?}", hub.lines()));
    assert!(!status.success());
    assert!(failed_at.elapsed() < Duration::from_secs(10));
    assert!(
        hub.lines()
            .iter()
            .any(|l| l.contains("a failed write is never retried"))
    );

    // Started again on the full disk, it refuses to open the store (which that could damage).
    let mut again = HubProcess::spawn_raw(
        &disk.path().join("data"),
        &[
            ("PIXELHUB_ADMIN_TOKEN", TOKEN),
            ("PIXELHUB_STORE_MIN_FREE_MB", "8"),
            ("PIXELHUB_JOURNAL_SEGMENT_MB", "1"),
            ("RUST_BACKTRACE", "0"),
        ],
    );
    let status = again.wait_exit(Duration::from_secs(10)).expect("it exits");
    assert!(!status.success());
    assert!(
        again
            .lines()
            .iter()
            .any(|l| l.contains("needs at least 18 MB to open safely")),
        "{:?}",
        again.lines()
    );

    // With room again it starts, and everything acknowledged is there.
    std::fs::remove_file(filler).unwrap();
    let hub = hub_on(&disk, 8);
    let api = Api::of(&hub);
    for player in &accepted {
        let pending = api.pending(player).await.len();
        if purged.contains(player) {
            assert_eq!(pending, 0, "{player} was purged");
        } else if *player != accepted[purged.len()] {
            assert_eq!(pending, 4, "{player} keeps what was acknowledged");
        }
    }
}
