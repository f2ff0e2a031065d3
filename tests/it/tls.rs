//! Built-in TLS: `https://` and `wss://` without a proxy, and a renewed certificate served without a
//! restart. Certificates come from the openssl command line, as an operator's would.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio_rustls::rustls::{self, pki_types};

use crate::helpers::{PATIENCE, TestApp, https_trusting};
use crate::process::HubProcess;

/// A test CA (made once per directory) and a certificate it signs for localhost and 127.0.0.1, written
/// as `<name>.pem` (the certificate, then the CA: a full chain, as certbot writes it) and `<name>.key`.
pub fn issue(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let script = format!(
        r#"set -e
[ -f ca.pem ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca.key -out ca.pem -days 2 -subj /CN=pixelhub-test-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}.key \
  -out {name}.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > {name}.ext
openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile {name}.ext -out {name}.leaf 2>/dev/null
cat {name}.leaf ca.pem > {name}.pem
"#
    );
    let status = std::process::Command::new("bash")
        .args(["-c", &script])
        .current_dir(dir)
        .status()
        .expect("bash and openssl (scripts/test installs openssl)");
    assert!(status.success(), "openssl failed");
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

/// The DER of the first certificate of a PEM file.
fn leaf_der(chain: &Path) -> Vec<u8> {
    use pki_types::pem::PemObject;
    pki_types::CertificateDer::pem_file_iter(chain)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// The certificate a new connection to the hub is shown, trusting the test CA of `dir`.
async fn served_certificate(app: &TestApp, dir: &Path) -> Vec<u8> {
    served_certificate_at(app.addr, dir).await
}

async fn served_certificate_at(addr: std::net::SocketAddr, dir: &Path) -> Vec<u8> {
    let client = https_trusting(Some(&dir.join("ca.pem")))
        .pool_max_idle_per_host(0)
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let answer = client
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    answer
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("a TLS connection")
        .to_vec()
}

type Wss =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// The next JSON message of a `wss://` session, answering pings.
async fn next_message(ws: &mut Wss) -> serde_json::Value {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a message in time");
        if let Message::Text(text) = frame.expect("open").expect("a frame") {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if value["type"] != "ping" {
                return value;
            }
            ws.send(Message::text(r#"{"type":"pong"}"#)).await.unwrap();
        }
    }
}

/// A `wss://` session of a `b1` player, past the welcome, trusting the test CA.
async fn wss_session(app: &TestApp, ca: &Path, player: &str) -> Wss {
    use futures::SinkExt;
    use pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pki_types::CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let name = pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the TLS handshake with the hub");
    let url = format!("wss://localhost:{}/websocket?brand_id=b1", app.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let hello = json!({"type": "hello", "v": 1, "brand_id": "b1", "player_id": player});
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        hello.to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_message(&mut ws).await["type"], "welcome");
    ws
}

#[tokio::test]
async fn the_hub_serves_https_and_wss_and_picks_up_a_renewed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = issue(dir.path(), "first");
    let app = TestApp::spawn_with(|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    })
    .await;
    assert!(app.url("/").starts_with("https://"));
    assert_eq!(served_certificate(&app, dir.path()).await, leaf_der(&cert));

    // A player's session over wss:// gets its pixel.
    let mut ws = wss_session(&app, &dir.path().join("ca.pem"), "secure").await;
    let ids = app
        .queue_for(
            "b1",
            "secure",
            json!({"kind": "image", "url": "https://aff.example/p"}),
        )
        .await;
    assert_eq!(
        crate::helpers::ids_of(&next_message(&mut ws).await["pixels"]),
        ids
    );

    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();
    assert!(
        plain
            .get(format!("http://{}/healthz", app.addr))
            .send()
            .await
            .is_err()
    );

    // A renewal written over the files is served to new connections; the open session stays.
    let (renewed, renewed_key) = issue(dir.path(), "second");
    std::fs::rename(&renewed_key, &key).unwrap();
    std::fs::rename(&renewed, &cert).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    while served_certificate(&app, dir.path()).await == leaf_der(&dir.path().join("first.leaf")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served_certificate(&app, dir.path()).await, leaf_der(&cert));
    let ids = app
        .queue_for(
            "b1",
            "secure",
            json!({"kind": "image", "url": "https://aff.example/q"}),
        )
        .await;
    let delivered = next_message(&mut ws).await;
    assert_eq!(
        crate::helpers::ids_of(&delivered["pixels"]),
        ids,
        "the session opened before the renewal goes on"
    );

    // A broken file keeps the certificate in force, and says so in the metrics.
    let failed = "pixelhub_tls_reloads_total{result=\"failed\"}";
    let failed_before = app.metric(failed).await;
    std::fs::write(&cert, "not a certificate").unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    while app.metric(failed).await == failed_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed reload was not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        served_certificate(&app, dir.path()).await,
        leaf_der(&dir.path().join("second.leaf"))
    );
}

#[tokio::test]
async fn a_missing_or_mismatched_certificate_stops_the_start_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = issue(dir.path(), "one");
    let (_, other_key) = issue(dir.path(), "two");
    let start = |cert: PathBuf, key: PathBuf| {
        let mut config = pixelhub::Config::for_data_dir(dir.path().join("data"));
        config.tls_cert = Some(cert);
        config.tls_key = Some(key);
        async move {
            match pixelhub::Application::build(config).await {
                Ok(_) => panic!("the hub started"),
                Err(e) => e.to_string(),
            }
        }
    };
    let missing = dir.path().join("missing.pem");
    let error = start(missing.clone(), other_key.clone()).await;
    assert!(error.contains(&missing.display().to_string()), "{error}");
    let error = start(cert.clone(), other_key.clone()).await;
    assert!(error.contains("does not fit"), "{error}");
    let mut config = pixelhub::Config::for_data_dir(dir.path().join("data"));
    config.tls_cert = Some(cert);
    let error = pixelhub::Application::build(config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("PIXELHUB_TLS_KEY"), "{error}");
}

#[tokio::test]
async fn sighup_makes_the_real_binary_load_a_renewed_certificate_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = issue(dir.path(), "first");
    let settings = [
        ("PIXELHUB_TLS_CERT", cert.to_str().unwrap()),
        ("PIXELHUB_TLS_KEY", key.to_str().unwrap()),
    ];
    let data = dir.path().join("data");
    let mut hub = HubProcess::start_with("127.0.0.1:0", &data, None, false, &settings);
    let first = leaf_der(&cert);
    assert_eq!(served_certificate_at(hub.addr, dir.path()).await, first);

    // A renewal whose files keep the old modification times: only SIGHUP can tell the hub.
    issue(dir.path(), "second");
    let script = "touch -r first.pem stamp.pem && touch -r first.key stamp.key \
        && mv second.pem first.pem && mv second.key first.key \
        && touch -r stamp.pem first.pem && touch -r stamp.key first.key";
    let moved = std::process::Command::new("bash")
        .args(["-c", script])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(moved.success());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        served_certificate_at(hub.addr, dir.path()).await,
        first,
        "no SIGHUP yet"
    );

    hub.signal(libc::SIGHUP);
    hub.wait_for_line("TLS certificate reloaded");
    assert_eq!(
        served_certificate_at(hub.addr, dir.path()).await,
        leaf_der(&cert)
    );
    let (status, _) = hub.terminate();
    assert!(status.success(), "SIGHUP did not end the hub: {status:?}");
}
