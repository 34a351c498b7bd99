//! What the running binary logs about certificates: one line per change
//! of state with the fields a user needs, and never a key or the EAB HMAC.

use super::pebble::{acme_yaml, EAB_HMAC, EAB_KID};
use super::*;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

struct Run {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    seen: Vec<String>,
}

impl Run {
    fn start(config: &std::path::Path) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_drowsy"))
            .args([
                "run",
                "--log-format",
                "json",
                "--log-level",
                "debug",
                "--config",
            ])
            .arg(config)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn drowsy");
        let lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        Run {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first JSON log line whose message contains `needle`.
    async fn wait(&mut self, needle: &str) -> serde_json::Value {
        let wait = async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .expect("stderr")
                    .unwrap_or_else(|| panic!("drowsy exited before logging {needle:?}"));
                self.seen.push(line.clone());
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["message"].as_str().is_some_and(|m| m.contains(needle)) {
                    return v;
                }
            }
        };
        match tokio::time::timeout(DEADLINE, wait).await {
            Ok(v) => v,
            Err(_) => panic!("no log line with {needle:?}:\n{}", self.seen.join("\n")),
        }
    }

    async fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill().await;
        while let Ok(Some(line)) = self.lines.next_line().await {
            self.seen.push(line);
        }
        self.seen
    }
}

#[tokio::test]
async fn log_lines_carry_the_details_and_no_secrets() {
    let Some((ports, p)) = ca(|o| o.eab = true).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("eab.key");
    std::fs::write(&key, EAB_HMAC).expect("write");
    let backend = Backend::start().await;
    // Each run its own storage: the first one's back-off is persisted.
    let config = |kid: &str| {
        format!(
            "{}{}  eab: {{kid: {kid}, hmac_key_file: {}}}\nroutes:\n  l:\n    host: l.test\n    backend: {}\n",
            ports.listen_yaml(),
            acme_yaml(&p, &dir.path().join(kid), "http-01"),
            key.display(),
            backend.url()
        )
    };
    let path = dir.path().join("drowsy.yml");
    // A key id the CA does not know: the account is refused.
    std::fs::write(&path, config("kid-unknown")).expect("write");
    let mut run = Run::start(&path);
    let failed = run.wait("certificate order failed").await;
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["name"], "l.test");
    assert_eq!(failed["ca"], p.directory.as_str());
    assert_eq!(failed["challenge"], "http-01");
    assert!(
        failed["problem"].as_str().is_some_and(|s| !s.is_empty()),
        "{failed}"
    );
    assert!(
        failed["hint"].as_str().is_some_and(|s| !s.is_empty()),
        "{failed}"
    );
    assert_eq!(
        failed["retry_in"]
            .as_str()
            .map(|s| s.ends_with('s') || s.ends_with('m')),
        Some(true),
        "{failed}"
    );
    let mut logs = run.stop().await;

    std::fs::write(&path, config(EAB_KID)).expect("write");
    let mut run = Run::start(&path);
    run.wait("ACME account created").await;
    let obtained = run.wait("certificate obtained").await;
    assert_eq!(obtained["level"], "INFO");
    assert_eq!(obtained["name"], "l.test");
    assert!(obtained["not_after"].is_string(), "{obtained}");
    logs.extend(run.stop().await);
    let all = logs.join("\n");
    assert!(!all.contains(EAB_HMAC), "the EAB HMAC key was logged");
    assert!(!all.contains("PRIVATE KEY"), "a private key was logged");
}

#[tokio::test]
async fn a_ca_rejecting_many_nonces_still_issues() {
    // One good nonce in five rejected (RFC 8555 §6.5 badNonce): requests
    // are retried with the fresh nonce the CA sends along.
    let Some((ports, p)) = ca(|o| o.nonce_reject = Some(20)).await else {
        return;
    };
    let storage = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let d = Drowsy::start(&format!(
        "{}{}routes:\n  n:\n    hosts: [n1.test, n2.test, n3.test]\n    backend: {}\n",
        ports.listen_yaml(),
        acme_yaml(&p, storage.path(), "http-01"),
        backend.url()
    ))
    .await;
    for name in ["n1.test", "n2.test", "n3.test"] {
        let st = wait_served(&d, &p, &ports, name, name).await;
        assert_eq!(st.failures, 0, "{st:?}");
    }
    d.running.shutdown().await;
}
