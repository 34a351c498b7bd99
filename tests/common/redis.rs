//! A real `redis-server` for the cluster tests, on a free loopback port,
//! killed when dropped. Without redis-server the tests say so and skip,
//! unless DROWSY_REQUIRE_REDIS is set (CI sets it: there a missing server
//! is a broken setup, not a reason to pass).

use super::{free_port, DEADLINE};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

pub fn available() -> bool {
    if on_path("redis-server") {
        return true;
    }
    if std::env::var_os("DROWSY_REQUIRE_REDIS").is_some() {
        panic!("redis-server is required (apt-get install redis-server)");
    }
    eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server); cluster tests need it");
    false
}

/// TLS files for a `rediss://` server: a CA, and a certificate for
/// 127.0.0.1 it signed.
pub struct TlsFiles {
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    pub fn write(dir: &Path) -> TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        let key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("sign");
        let files = TlsFiles {
            ca: dir.join("redis-ca.pem"),
            cert: dir.join("redis.pem"),
            key: dir.join("redis.key"),
        };
        std::fs::write(&files.ca, ca.pem()).expect("write ca");
        std::fs::write(&files.cert, leaf.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    tls: Option<TlsFiles>,
}

impl Redis {
    pub async fn start() -> Redis {
        Redis::launch(free_port(), None).await
    }

    pub async fn start_tls() -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = TlsFiles::write(dir.path());
        let mut r = Redis::launch(free_port(), Some(tls)).await;
        r.dir = dir;
        r
    }

    async fn launch(port: u16, tls: Option<TlsFiles>) -> Redis {
        let mut r = Redis {
            port,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            tls,
        };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("rediss://127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca.as_path())
    }

    /// Starts (again) on the same port, and waits until it answers.
    pub async fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path());
        match &self.tls {
            None => {
                cmd.arg("--port").arg(self.port.to_string());
            }
            Some(t) => {
                cmd.arg("--port")
                    .arg("0")
                    .arg("--tls-port")
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(&t.cert)
                    .arg("--tls-key-file")
                    .arg(&t.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&t.ca)
                    .arg("--tls-auth-clients")
                    .arg("no");
            }
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        self.child = Some(cmd.spawn().expect("start redis-server"));
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills the server (SIGKILL) and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// A plain connection for looking at the keys.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = match &self.tls {
            None => redis::Client::open(self.url()).expect("client"),
            Some(t) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(&t.ca).expect("ca")),
                },
            )
            .expect("client"),
        };
        client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        let mut c = self.conn().await;
        redis::cmd("GET")
            .arg(key)
            .query_async::<Option<String>>(&mut c)
            .await
            .expect("GET")
    }
}
