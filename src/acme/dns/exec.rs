//! `provider: exec`: any DNS API through a program of the user's, called
//! as `COMMAND present FQDN VALUE` and `COMMAND cleanup FQDN VALUE` (the
//! convention of lego's exec provider, so existing hooks work). FQDN ends
//! with a dot; VALUE is the TXT record's content. Exit status 0 is success.

use crate::acme::problem::Failure;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

pub struct Exec {
    command: PathBuf,
    timeout: Duration,
}

impl Exec {
    pub fn new(command: PathBuf, timeout: Duration) -> Exec {
        Exec { command, timeout }
    }

    pub async fn run(&self, action: &str, fqdn: &str, value: &str) -> Result<(), Failure> {
        let fqdn = format!("{}.", fqdn.trim_end_matches('.'));
        let shown = format!("{} {action} {fqdn}", self.command.display());
        let hint = "run the hook by hand with the same arguments to see what it does";
        let child = Command::new(&self.command)
            .arg(action)
            .arg(&fqdn)
            .arg(value)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Failure::new("dns-provider", format!("cannot run {shown}: {e}"), hint))?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(Failure::new("dns-provider", format!("{shown}: {e}"), hint));
            }
            Err(_) => {
                return Err(Failure::new(
                    "dns-provider",
                    format!("{shown} did not finish within {}s", self.timeout.as_secs()),
                    "the hook must exit when the record is written; raise dns.command_timeout if it is just slow",
                ));
            }
        };
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .trim()
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(Failure::new(
            "dns-provider",
            format!("{shown} failed ({}): {tail}", out.status),
            hint,
        ))
    }
}
