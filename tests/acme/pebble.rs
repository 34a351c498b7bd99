//! A real ACME CA for the tests: Debian's `pebble`, with
//! `pebble-challtestsrv` as its DNS server. pebble validates on the ports
//! drowsy listens on and resolves every name to 127.0.0.1.

use crate::common::{free_port, DEADLINE};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// pebble's EAB example key (base64url), for kid `kid-1`.
pub const EAB_KID: &str = "kid-1";
pub const EAB_HMAC: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// Whether pebble can run here. Without it the tests skip, saying so,
/// unless DROWSY_REQUIRE_PEBBLE is set (CI sets it: there a missing
/// pebble is a broken setup, not a reason to pass).
pub fn available() -> bool {
    if on_path("pebble") && on_path("pebble-challtestsrv") {
        return true;
    }
    if std::env::var_os("DROWSY_REQUIRE_PEBBLE").is_some() {
        panic!("pebble and pebble-challtestsrv are required (apt-get install pebble)");
    }
    eprintln!("SKIPPED: pebble is not installed (apt-get install pebble); ACME tests need it");
    false
}

#[derive(Clone, Default)]
pub struct Opts {
    /// Where pebble validates HTTP-01 and TLS-ALPN-01 (drowsy's ports).
    pub http_port: u16,
    pub tls_port: u16,
    /// Certificate lifetime in seconds (pebble's default: 5 years).
    pub validity: Option<u64>,
    pub eab: bool,
    /// Percentage of good nonces pebble rejects; its default (5) stays on
    /// in every other test.
    pub nonce_reject: Option<u8>,
}

pub struct Pebble {
    pub dir: tempfile::TempDir,
    pebble: Option<Child>,
    _cts: Child,
    pub directory: String,
    pub mgmt: SocketAddr,
    pub cts_mgmt: SocketAddr,
    /// challtestsrv's DNS server (UDP and TCP).
    pub dns: SocketAddr,
    /// The CA of pebble's own listener, for `acme.ca_file`.
    pub ca_file: PathBuf,
    opts: Opts,
    log: Arc<Mutex<Vec<String>>>,
}

/// A TLS certificate for pebble's listener (localhost and 127.0.0.1),
/// signed by a throwaway CA written to `ca.pem`.
fn listener_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("sign");
    let (ca_file, cert, key_file) = (
        dir.join("ca.pem"),
        dir.join("pebble.pem"),
        dir.join("pebble.key"),
    );
    std::fs::write(&ca_file, ca.pem()).expect("write");
    std::fs::write(&cert, leaf.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    (ca_file, cert, key_file)
}

/// Forwards a child's output lines into the shared log (printed when a
/// test fails) and announces each one.
fn collect(
    child: &mut Child,
    log: Arc<Mutex<Vec<String>>>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let out = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let err = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    for stream in [out, err].into_iter().flatten() {
        let log = log.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().expect("log").push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
}

/// Waits until something accepts TCP connections at `addr`.
pub async fn wait_port(addr: SocketAddr) {
    let wait = async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("nothing listens on {addr}"));
}

impl Pebble {
    pub async fn start(opts: Opts) -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let cts_mgmt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut cts = Command::new("pebble-challtestsrv")
            .args([
                "-management",
                &cts_mgmt.to_string(),
                "-dns01",
                &dns.to_string(),
            ])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start pebble-challtestsrv");
        collect(&mut cts, log.clone(), tx);
        wait_port(cts_mgmt).await;
        // The DNS server listens on TCP and UDP; TCP is the one we can see.
        wait_port(dns).await;
        let (ca_file, _, _) = listener_cert(dir.path());
        let mut p = Pebble {
            dir,
            pebble: None,
            _cts: cts,
            directory: String::new(),
            mgmt: "127.0.0.1:0".parse().expect("addr"),
            cts_mgmt,
            dns,
            ca_file,
            opts,
            log,
        };
        p.start_pebble().await;
        p
    }

    /// (Re)starts pebble itself on fresh ports; a new root each time.
    async fn start_pebble(&mut self) {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mgmt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let d = self.dir.path();
        let mut cfg = serde_json::json!({"pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": mgmt.to_string(),
            "certificate": d.join("pebble.pem"),
            "privateKey": d.join("pebble.key"),
            "httpPort": self.opts.http_port,
            "tlsPort": self.opts.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": self.opts.eab,
        }});
        if let Some(v) = self.opts.validity {
            cfg["pebble"]["certificateValidityPeriod"] = v.into();
        }
        if self.opts.eab {
            cfg["pebble"]["externalAccountMACKeys"] = serde_json::json!({ EAB_KID: EAB_HMAC });
        }
        let path = d.join("pebble.json");
        std::fs::write(&path, cfg.to_string()).expect("write pebble.json");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut child = Command::new("pebble")
            .arg("-config")
            .arg(&path)
            .args(["-dnsserver", &self.dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .envs(
                self.opts
                    .nonce_reject
                    .map(|n| ("PEBBLE_WFE_NONCEREJECT", n.to_string())),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start pebble");
        collect(&mut child, self.log.clone(), tx);
        self.pebble = Some(child);
        wait_port(listen).await;
        wait_port(mgmt).await;
        self.directory = format!("https://{listen}/dir");
        self.mgmt = mgmt;
    }

    /// Stops the CA (challtestsrv stays).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill().await;
        }
    }

    fn client(&self) -> reqwest::Client {
        let roots = drowsy::config::tls_files::read_roots(&self.ca_file).expect("roots");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(DEADLINE)
            .build()
            .expect("client")
    }

    /// The root that issues this pebble's certificates.
    pub async fn root(&self) -> rustls::RootCertStore {
        let pem = self
            .client()
            .get(format!("https://{}/roots/0", self.mgmt))
            .send()
            .await
            .expect("roots/0")
            .text()
            .await
            .expect("root pem");
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(c.expect("pem")).expect("root");
        }
        roots
    }

    /// A request to challtestsrv's management API.
    pub async fn cts(&self, path: &str, body: serde_json::Value) {
        let resp = reqwest::Client::new()
            .post(format!("http://{}{path}", self.cts_mgmt))
            .json(&body)
            .send()
            .await
            .expect("challtestsrv");
        assert!(
            resp.status().is_success(),
            "challtestsrv {path}: {}",
            resp.status()
        );
    }

    /// pebble's and challtestsrv's output so far (for failure messages).
    pub fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }
}

/// The `acme:` section for this pebble.
pub fn acme_yaml(p: &Pebble, storage: &Path, challenge: &str) -> String {
    format!(
        "acme:\n  email: admin@example.com\n  directory: {}\n  ca_file: {}\n  storage: {}\n  challenge: {challenge}\n",
        p.directory,
        p.ca_file.display(),
        storage.display()
    )
}
