//! Worker task ids (UPIDs) and the task table behind
//! `GET /nodes/{node}/tasks/{upid}/status`.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// A decoded UPID, `UPID:{node}:{pid}:{pstart}:{starttime}:{type}:{id}:{user}:`
/// with pid, pstart and starttime in upper-case hex of at least 8 digits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Upid {
    pub node: String,
    pub pid: u32,
    /// Process start in clock ticks since boot: more than 8 hex digits on a
    /// host that has been up for a long time.
    pub pstart: u64,
    pub starttime: u64,
    pub kind: String,
    pub id: String,
    pub user: String,
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, self.pid, self.pstart, self.starttime, self.kind, self.id, self.user
        )
    }
}

impl Upid {
    /// Parses the text form; `None` when it is not a UPID (the real server
    /// answers that with "unable to parse worker upid").
    pub fn parse(s: &str) -> Option<Upid> {
        let rest = s.strip_prefix("UPID:")?.strip_suffix(':')?;
        let mut parts = rest.splitn(7, ':');
        let node = parts.next()?.to_string();
        let pid = u32::from_str_radix(hex8(parts.next()?)?, 16).ok()?;
        let pstart = u64::from_str_radix(hex8(parts.next()?)?, 16).ok()?;
        let starttime = u64::from_str_radix(hex8(parts.next()?)?, 16).ok()?;
        let kind = parts.next()?.to_string();
        let id = parts.next()?.to_string();
        let user = parts.next()?.to_string();
        if node.is_empty() || kind.is_empty() || user.is_empty() {
            return None;
        }
        Some(Upid {
            node,
            pid,
            pstart,
            starttime,
            kind,
            id,
            user,
        })
    }
}

fn hex8(s: &str) -> Option<&str> {
    (s.len() >= 8 && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s)
}

/// Per-node counters that make pids and pstarts look like a real host's.
#[derive(Debug)]
struct NodeClock {
    next_pid: u32,
    pstart: u64,
}

/// One worker task: running until `exitstatus` is set.
#[derive(Debug)]
struct Task {
    upid: Upid,
    exitstatus: Option<String>,
}

/// All tasks the simulated cluster has started.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    clocks: HashMap<String, NodeClock>,
    tasks: HashMap<String, Task>,
}

impl Tasks {
    /// Starts a task on `node` and returns its UPID text.
    pub fn create(
        &mut self,
        node: &str,
        node_index: usize,
        kind: &str,
        id: u32,
        user: &str,
    ) -> String {
        let clock = self
            .clocks
            .entry(node.to_string())
            .or_insert_with(|| NodeClock::new(node_index));
        let upid = Upid {
            node: node.to_string(),
            pid: clock.next_pid,
            pstart: clock.pstart,
            starttime: unix_now(),
            kind: kind.to_string(),
            id: id.to_string(),
            user: user.to_string(),
        };
        clock.next_pid += 7;
        clock.pstart += 131;
        let text = upid.to_string();
        self.tasks.insert(
            text.clone(),
            Task {
                upid,
                exitstatus: None,
            },
        );
        text
    }

    /// Marks a task stopped with its exit status (`OK`, `WARNINGS: n` or an
    /// error text). A task finishes only once.
    pub fn finish(&mut self, upid: &str, exitstatus: &str) {
        if let Some(task) = self.tasks.get_mut(upid) {
            if task.exitstatus.is_none() {
                task.exitstatus = Some(exitstatus.to_string());
            }
        }
    }

    /// The owner recorded in the UPID, for the "own tasks are always
    /// visible" rule.
    pub fn user(&self, upid: &str) -> Option<&str> {
        self.tasks.get(upid).map(|t| t.upid.user.as_str())
    }

    /// The node's tasks for `GET /nodes/{node}/tasks` (the running ones only
    /// with `source=active`), each with the user recorded in its UPID.
    pub fn listed(&self, node: &str, active_only: bool) -> Vec<(String, Value)> {
        let mut out: Vec<_> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.upid.node == node)
            .filter(|(_, t)| !active_only || t.exitstatus.is_none())
            .filter_map(|(text, t)| Some((t.upid.user.clone(), self.status_json(text)?)))
            .collect();
        out.sort_by_key(|(_, v)| v["starttime"].as_u64());
        out
    }

    /// The `data` of the task status call, as PVE returns it.
    pub fn status_json(&self, upid: &str) -> Option<Value> {
        let task = self.tasks.get(upid)?;
        let u = &task.upid;
        // PVE reports the token owner as `user` and the token name apart.
        let (user, tokenid) = match u.user.rsplit_once('!') {
            Some((user, token)) => (user, Some(token)),
            None => (u.user.as_str(), None),
        };
        let mut v = json!({
            "upid": upid,
            "node": u.node,
            "pid": u.pid,
            "pstart": u.pstart,
            "starttime": u.starttime,
            "type": u.kind,
            "id": u.id,
            "user": user,
            "status": if task.exitstatus.is_some() { "stopped" } else { "running" },
        });
        if let Some(t) = tokenid {
            v["tokenid"] = json!(t);
        }
        if let Some(exit) = &task.exitstatus {
            v["exitstatus"] = json!(exit);
        }
        Some(v)
    }
}

impl NodeClock {
    /// Even-indexed nodes (including the default `pve1`) play hosts with a
    /// long uptime, whose pstart needs nine hex digits.
    fn new(node_index: usize) -> Self {
        let index = node_index as u32;
        NodeClock {
            next_pid: 0x0002_1A40 + index * 0x1000,
            pstart: if node_index.is_multiple_of(2) {
                0x1_2F3A_4B5C
            } else {
                0x0067_8ABC
            },
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upids_round_trip_with_nine_digit_pstart() {
        let mut tasks = Tasks::default();
        let text = tasks.create("pve1", 0, "vzstart", 105, "drowsy@pve!proxy");
        let upid = Upid::parse(&text).expect("parses");
        assert_eq!(upid.to_string(), text);
        assert_eq!(format!("{:08X}", upid.pstart).len(), 9);
        let other = tasks.create("pve2", 1, "qmstart", 7, "drowsy@pve");
        assert_eq!(other.split(':').nth(3).map(str::len), Some(8));
    }

    #[test]
    fn status_is_running_until_finished() {
        let mut tasks = Tasks::default();
        let upid = tasks.create("pve1", 0, "qmstop", 7, "drowsy@pve!proxy");
        let v = tasks.status_json(&upid).expect("known");
        assert_eq!(v["status"], "running");
        assert!(v.get("exitstatus").is_none());
        assert_eq!(v["user"], "drowsy@pve");
        assert_eq!(v["tokenid"], "proxy");
        tasks.finish(&upid, "OK");
        tasks.finish(&upid, "late error");
        let v = tasks.status_json(&upid).expect("known");
        assert_eq!(v["status"], "stopped");
        assert_eq!(v["exitstatus"], "OK");
    }
}
