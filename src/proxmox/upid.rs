//! Task identifiers (UPIDs) as returned by every Proxmox power action.

use std::fmt;
use std::str::FromStr;

/// A parsed UPID. The format follows `PVE::Tools::upid_decode`:
/// `UPID:{node}:{pid 8 hex}:{pstart 8-9 hex}:{starttime 8 hex}:{type}:{id}:{user}:`
/// where `id` may be empty and `user` may be a token (`user@realm!tokenid`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upid {
    raw: String,
    pub node: String,
    pub pid: u32,
    pub pstart: u64,
    pub starttime: u64,
    pub task_type: String,
    pub id: String,
    pub user: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed task id (UPID) {value:?}: {reason}")]
pub struct UpidError {
    pub value: String,
    pub reason: &'static str,
}

impl Upid {
    /// The UPID exactly as Proxmox sent it (needed verbatim in task URLs).
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for Upid {
    type Err = UpidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| UpidError {
            value: s.to_string(),
            reason,
        };
        let rest = s
            .strip_prefix("UPID:")
            .ok_or_else(|| err("must start with UPID:"))?;
        let rest = rest
            .strip_suffix(':')
            .ok_or_else(|| err("must end with ':'"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let [node, pid, pstart, starttime, task_type, id, user] = parts[..] else {
            return Err(err("expected 8 ':'-separated fields"));
        };
        if !valid_node(node) {
            return Err(err("invalid node name"));
        }
        let pid = hex_field(pid, 8, 8).ok_or_else(|| err("pid must be 8 hex digits"))?;
        let pstart =
            hex_field(pstart, 8, 9).ok_or_else(|| err("pstart must be 8 or 9 hex digits"))?;
        let starttime =
            hex_field(starttime, 8, 8).ok_or_else(|| err("starttime must be 8 hex digits"))?;
        if task_type.is_empty() || has_space(task_type) {
            return Err(err("task type must be non-empty without spaces"));
        }
        if has_space(id) {
            return Err(err("task id field must not contain spaces"));
        }
        if user.is_empty() || has_space(user) {
            return Err(err("user must be non-empty without spaces"));
        }
        Ok(Upid {
            raw: s.to_string(),
            node: node.to_string(),
            pid: u32::try_from(pid).map_err(|_| err("pid out of range"))?,
            pstart,
            starttime,
            task_type: task_type.to_string(),
            id: id.to_string(),
            user: user.to_string(),
        })
    }
}

/// `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`, as in `upid_decode`.
fn valid_node(node: &str) -> bool {
    let b = node.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        }
        _ => false,
    }
}

fn hex_field(s: &str, min: usize, max: usize) -> Option<u64> {
    if s.len() < min || s.len() > max || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn has_space(s: &str) -> bool {
    s.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real-format UPIDs as printed by `pvesh get /nodes/pve1/tasks`; the
    // field layout is the one PVE::Tools::upid_decode accepts.
    #[test]
    fn parses_lxc_start_by_token() {
        let u: Upid = "UPID:pve1:000A1B2C:0012D3E4:65F1A2B3:vzstart:105:drowsy@pve!proxy:"
            .parse()
            .unwrap();
        assert_eq!(u.node, "pve1");
        assert_eq!(u.pid, 0x000A1B2C);
        assert_eq!(u.pstart, 0x0012D3E4);
        assert_eq!(u.starttime, 0x65F1A2B3);
        assert_eq!(u.task_type, "vzstart");
        assert_eq!(u.id, "105");
        assert_eq!(u.user, "drowsy@pve!proxy");
        assert_eq!(
            u.to_string(),
            "UPID:pve1:000A1B2C:0012D3E4:65F1A2B3:vzstart:105:drowsy@pve!proxy:"
        );
    }

    // pstart is the process start time in clock ticks; on long-running nodes
    // it grows to 9 hex digits, which upid_decode allows ({8,9}).
    #[test]
    fn accepts_nine_digit_pstart_and_empty_id() {
        let u: Upid = "UPID:node-2:00001234:1A2B3C4D5:65F1A2B3:aptupdate::root@pam:"
            .parse()
            .unwrap();
        assert_eq!(u.pstart, 0x1A2B3C4D5);
        assert_eq!(u.id, "");
        assert_eq!(u.task_type, "aptupdate");
    }

    // HA-managed guests answer a start with an `hastart` task.
    #[test]
    fn accepts_ha_task() {
        let u: Upid = "UPID:pve3:0003F00D:00ABCDEF:66000000:hastart:200:root@pam:"
            .parse()
            .unwrap();
        assert_eq!(u.task_type, "hastart");
        assert_eq!(u.node, "pve3");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "UPID:pve1:000A1B2C:0012D3E4:65F1A2B3:vzstart:105:root@pam",
            "upid:pve1:000A1B2C:0012D3E4:65F1A2B3:vzstart:105:root@pam:",
            "UPID:pve1:A1B2C:0012D3E4:65F1A2B3:vzstart:105:root@pam:",
            "UPID:pve1:000A1B2C:0012D3E4:65F1A2B3:vzstart:105::",
            "UPID:pve1:000A1B2C:0012D3E4:65F1A2B3::105:root@pam:",
            "UPID:-pve1:000A1B2C:0012D3E4:65F1A2B3:vzstart:105:root@pam:",
            "UPID:pve1:000A1B2G:0012D3E4:65F1A2B3:vzstart:105:root@pam:",
            "UPID:pve1:000A1B2C:0012D3E4AB:65F1A2B3:vzstart:105:root@pam:",
            "UPID:pve1:000A1B2C:0012D3E4:65F1A2B3:vzstart:105:root@pam:extra:",
            "UPID:pve_1:000A1B2C:0012D3E4:65F1A2B3:vzstart:105:root@pam:",
        ] {
            let e = bad.parse::<Upid>().unwrap_err();
            assert!(e.to_string().contains("malformed task id"), "{bad}: {e}");
        }
    }
}
