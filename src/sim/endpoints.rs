//! Read-only endpoints, login, and the shared checks every handler makes
//! (parameters first, then privileges, then existence, as in PVE).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::api::{ApiError, Params, Route};
use super::auth::Principal;
use super::spec::{format_mac, guest_mac, link_local};
use super::state::{lock, Guest, Power, Shared, Snapshot};
use super::usage::{self, max_cpu};
use super::{actions, agent, nodes, termproxy, GuestKind};

/// The version the simulator claims to be.
const VERSION: &str = "9.0.3";
const RELEASE: &str = "9.0";

pub(crate) fn call(
    shared: &Arc<Shared>,
    who: &Principal,
    route: Route,
    params: &Params,
) -> Result<Value, ApiError> {
    match route {
        Route::Version => {
            Ok(json!({"version": VERSION, "release": RELEASE, "repoid": "d9b0f6c8e1f2a3b4"}))
        }
        Route::ClusterStatus => cluster_status(shared, who),
        Route::ClusterResources => cluster_resources(shared, who, params),
        Route::Ticket => login(shared, params),
        Route::TaskStatus { node, upid } => task_status(shared, who, &node, &upid),
        Route::StatusCurrent { node, kind, vmid } => {
            let vmid = audit(shared, who, &node, kind, &vmid, "VM.Audit")?;
            guest_view(shared, vmid, status_current)
        }
        Route::Power {
            node,
            kind,
            vmid,
            action,
        } => {
            let vmid = check_vmid(&vmid)?;
            actions::validate(kind, action, params)?;
            require(shared, who, &format!("/vms/{vmid}"), &["VM.PowerMgmt"])?;
            locate(shared, &node, kind, vmid)?;
            actions::run(shared, who, vmid, action, params)
        }
        Route::Config { node, kind, vmid } => {
            let vmid = audit(shared, who, &node, kind, &vmid, "VM.Audit")?;
            guest_view(shared, vmid, config)
        }
        Route::LxcInterfaces { node, vmid } => {
            let vmid = audit(shared, who, &node, GuestKind::Lxc, &vmid, "VM.Audit")?;
            guest_view(shared, vmid, lxc_interfaces)?
        }
        Route::AgentNetwork { node, vmid } => {
            let vmid = check_vmid(&vmid)?;
            // PVE 9 checks VM.GuestAgent.Audit, PVE 8 VM.Monitor.
            require(
                shared,
                who,
                &format!("/vms/{vmid}"),
                &["VM.GuestAgent.Audit", "VM.Monitor"],
            )?;
            locate(shared, &node, GuestKind::Qemu, vmid)?;
            guest_view(shared, vmid, agent_interfaces)?
        }
        Route::AgentExec { node, vmid } => {
            let vmid = agent_exec_allowed(shared, who, &node, &vmid)?;
            agent::exec(shared, vmid, params)
        }
        Route::AgentExecStatus { node, vmid } => {
            let vmid = agent_exec_allowed(shared, who, &node, &vmid)?;
            agent::status(shared, vmid, params)
        }
        Route::TermProxy { node } => termproxy::open(shared, who, &node, params),
        Route::NodeStatus { node } => nodes::status_command(shared, who, &node, params),
        Route::WakeOnLan { node } => nodes::wake_on_lan(shared, who, &node),
        Route::NodeTasks { node } => node_tasks(shared, who, &node, params),
        Route::ConfigNodes => nodes::config_nodes(shared, who),
        // Answered with an upgrade before it gets here.
        Route::VncWebsocket { .. } => Err(ApiError::Server("websocket upgrade required".into())),
    }
}

/// Running commands in a VM: PVE 9 checks VM.GuestAgent.Unrestricted,
/// PVE 8 VM.Monitor.
fn agent_exec_allowed(
    shared: &Shared,
    who: &Principal,
    node: &str,
    vmid: &str,
) -> Result<u32, ApiError> {
    let vmid = check_vmid(vmid)?;
    require(
        shared,
        who,
        &format!("/vms/{vmid}"),
        &["VM.GuestAgent.Unrestricted", "VM.Monitor"],
    )?;
    locate(shared, node, GuestKind::Qemu, vmid)?;
    Ok(vmid)
}

/// Validates the vmid, checks `privilege` on it and that the guest lives
/// on `node` with this `kind`.
fn audit(
    shared: &Shared,
    who: &Principal,
    node: &str,
    kind: GuestKind,
    vmid: &str,
    privilege: &str,
) -> Result<u32, ApiError> {
    let vmid = check_vmid(vmid)?;
    require(shared, who, &format!("/vms/{vmid}"), &[privilege])?;
    locate(shared, node, kind, vmid)?;
    Ok(vmid)
}

pub(crate) fn check_vmid(text: &str) -> Result<u32, ApiError> {
    let n: u64 = text.parse().map_err(|_| {
        ApiError::param(
            "vmid",
            format!("type check ('integer') failed - got '{text}'"),
        )
    })?;
    if n < 100 {
        return Err(ApiError::param(
            "vmid",
            "value must have a minimum value of 100",
        ));
    }
    u32::try_from(n)
        .ok()
        .filter(|&v| v <= 999_999_999)
        .ok_or_else(|| ApiError::param("vmid", "value must have a maximum value of 999999999"))
}

/// Passes if the caller has any of `privileges`; the error names the first.
pub(crate) fn require(
    shared: &Shared,
    who: &Principal,
    path: &str,
    privileges: &[&str],
) -> Result<(), ApiError> {
    let auth = lock(&shared.auth);
    if privileges.iter().any(|p| auth.has_privilege(&who.name, p)) {
        return Ok(());
    }
    Err(ApiError::Forbidden {
        path: path.to_string(),
        privilege: privileges.first().copied().unwrap_or("").to_string(),
    })
}

/// Finds the guest's config where PVE would: `nodes/{node}/{type}/{vmid}.conf`.
pub(crate) fn locate(
    shared: &Shared,
    node: &str,
    kind: GuestKind,
    vmid: u32,
) -> Result<(), ApiError> {
    known_node(shared, node)?;
    let found = lock(&shared.guests)
        .get(&vmid)
        .is_some_and(|g| g.spec.node == node && g.spec.kind == kind);
    if found {
        return Ok(());
    }
    lock(&shared.misdirected).push(format!("{node} {vmid}"));
    Err(ApiError::Server(format!(
        "Configuration file 'nodes/{node}/{}/{vmid}.conf' does not exist",
        kind.as_str()
    )))
}

/// A node outside the cluster is a host name pveproxy cannot resolve.
pub(crate) fn known_node(shared: &Shared, node: &str) -> Result<(), ApiError> {
    if shared.node_index(node).is_some() {
        if !shared.node_online(node) {
            return Err(ApiError::NodeUnreachable("No route to host".to_string()));
        }
        return Ok(());
    }
    Err(ApiError::Server(format!(
        "hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
    )))
}

fn guest_view<R>(shared: &Shared, vmid: u32, f: impl FnOnce(&Guest) -> R) -> Result<R, ApiError> {
    lock(&shared.guests)
        .get(&vmid)
        .map(f)
        .ok_or_else(|| ApiError::Server(format!("VM {vmid} does not exist")))
}

pub(crate) fn login(shared: &Shared, params: &Params) -> Result<Value, ApiError> {
    let missing = |name: &str| ApiError::param(name, "property is missing and it is not optional");
    let mut username = params
        .get("username")
        .cloned()
        .ok_or_else(|| missing("username"))?;
    let password = params.get("password").ok_or_else(|| missing("password"))?;
    if let Some(realm) = params.get("realm").filter(|_| !username.contains('@')) {
        username = format!("{username}@{realm}");
    }
    let login = lock(&shared.auth)
        .login(&username, password)
        .map_err(|e| ApiError::Unauthorized(e.reason()))?;
    Ok(json!({
        "ticket": login.ticket,
        "CSRFPreventionToken": login.csrf,
        "username": login.username,
        "clustername": "sim",
        "cap": {},
    }))
}

/// Quorate while the online nodes hold more than half of all votes
/// (corosync's votequorum). A standalone node has no `cluster` entry.
fn cluster_status(shared: &Shared, who: &Principal) -> Result<Value, ApiError> {
    require(shared, who, "/", &["Sys.Audit"])?;
    let nodes = shared.node_names();
    let power = lock(&shared.node_power);
    let total: u32 = nodes.iter().map(|n| power.votes(n)).sum();
    let online: u32 = nodes
        .iter()
        .filter(|n| shared.node_online(n))
        .map(|n| power.votes(n))
        .sum();
    let mut out = Vec::new();
    if !power.standalone {
        out.push(json!({
            "type": "cluster", "id": "cluster", "name": "sim",
            "nodes": nodes.len(), "quorate": u8::from(online * 2 > total),
            "version": nodes.len() + 2,
        }));
    }
    for (i, node) in nodes.iter().enumerate() {
        out.push(json!({
            "type": "node", "id": format!("node/{node}"), "name": node,
            "online": u8::from(shared.node_online(node)),
            "local": u8::from(*node == power.api_node),
            "nodeid": if power.standalone { 0 } else { i + 1 }, "ip": "127.0.0.1", "level": "",
        }));
    }
    Ok(Value::Array(out))
}

/// `GET /nodes/{node}/tasks?source=active`: the node's running tasks
/// (other users' only with Sys.Audit on the node).
fn node_tasks(
    shared: &Shared,
    who: &Principal,
    node: &str,
    params: &Params,
) -> Result<Value, ApiError> {
    known_node(shared, node)?;
    let auditor = require(shared, who, &format!("/nodes/{node}"), &["Sys.Audit"]).is_ok();
    let active_only = params.get("source").map(String::as_str) == Some("active");
    let tasks = lock(&shared.tasks).listed(node, active_only);
    Ok(Value::Array(
        tasks
            .into_iter()
            .filter(|(user, _)| auditor || *user == who.name)
            .map(|(_, task)| task)
            .collect(),
    ))
}

fn cluster_resources(shared: &Shared, who: &Principal, params: &Params) -> Result<Value, ApiError> {
    let filter = params.get("type").map(String::as_str);
    if let Some(t) = filter.filter(|t| !["vm", "storage", "node", "sdn"].contains(t)) {
        return Err(ApiError::param(
            "type",
            format!(
                "value '{t}' does not have a value in the enumeration 'vm, storage, node, sdn'"
            ),
        ));
    }
    let mut out = Vec::new();
    if matches!(filter, None | Some("node")) && require(shared, who, "/", &["Sys.Audit"]).is_ok() {
        out.extend(
            shared
                .node_names()
                .iter()
                .map(|n| node_resource(n, shared.node_online(n))),
        );
    }
    // Without VM.Audit guests are silently left out, as in PVE.
    if matches!(filter, None | Some("vm")) && require(shared, who, "/vms", &["VM.Audit"]).is_ok() {
        out.extend(resource_snapshot(shared));
    }
    Ok(Value::Array(out))
}

/// An offline node keeps only its identity: pvestatd has no data for it.
fn node_resource(node: &str, online: bool) -> Value {
    if !online {
        return json!({
            "id": format!("node/{node}"), "type": "node", "node": node, "status": "offline",
            "level": "",
        });
    }
    json!({
        "id": format!("node/{node}"), "type": "node", "node": node, "status": "online",
        "cpu": 0.03, "maxcpu": 8, "mem": 6_442_450_944u64, "maxmem": 34_359_738_368u64,
        "disk": 5_368_709_120u64, "maxdisk": 107_374_182_400u64, "uptime": 864_000, "level": "",
    })
}

/// The guest rows as of the last refresh; refreshed when older than
/// `resources_refresh` (zero means always live).
fn resource_snapshot(shared: &Shared) -> Vec<Value> {
    let refresh = shared.knobs().resources_refresh;
    let mut snap = lock(&shared.snapshot);
    let vms = match snap
        .as_ref()
        .filter(|s| !refresh.is_zero() && s.taken.elapsed() < refresh)
    {
        Some(s) => s.vms.clone(),
        None => {
            let vms = take_snapshot(shared);
            *snap = Some(Snapshot {
                taken: Instant::now(),
                vms: vms.clone(),
            });
            vms
        }
    };
    drop(snap);
    vms.into_iter()
        .map(|v| with_live_config(shared, v))
        .collect()
}

/// PVE fills `lock`, `tags` and the node from the guest configs and the
/// cluster's VM list on every call; only status and usage come from
/// pvestatd's lagging samples. A guest on an offline node has no samples:
/// `status: unknown`, and no name or template flag.
fn with_live_config(shared: &Shared, mut v: Value) -> Value {
    let Some(vmid) = v.get("vmid").and_then(Value::as_u64) else {
        return v;
    };
    let live = shared.with_guest(vmid as u32, |g| {
        (
            g.spec.node.clone(),
            g.lock.clone(),
            g.spec.kind,
            g.spec.template,
        )
    });
    let Some((node, lock, kind, template)) = live else {
        return v;
    };
    if let Value::Object(o) = &mut v {
        o.remove("lock");
        if let Some(lock) = lock {
            o.insert("lock".into(), json!(lock));
        }
        o.insert("id".into(), json!(format!("{}/{vmid}", kind.as_str())));
        o.insert("template".into(), json!(u8::from(template)));
        if !shared.node_online(&node) {
            o.retain(|k, _| ["id", "type", "vmid", "node", "lock", "tags"].contains(&k.as_str()));
            o.insert("status".into(), json!("unknown"));
        }
        o.insert("node".into(), json!(node));
    }
    v
}

pub(crate) fn take_snapshot(shared: &Shared) -> Vec<Value> {
    lock(&shared.guests).values().map(vm_resource).collect()
}

/// What pvestatd reports as status: a paused VM shows its QMP status.
fn broadcast_status(g: &Guest) -> &'static str {
    match (g.power, g.spec.kind) {
        (Power::Suspended, GuestKind::Qemu) => "paused",
        (Power::Prelaunch, _) => "prelaunch",
        (Power::Stopped, _) => "stopped",
        _ => "running",
    }
}

fn vm_resource(g: &Guest) -> Value {
    let s = &g.spec;
    let up = g.power != Power::Stopped;
    let mut v = json!({
        "id": format!("{}/{}", s.kind.as_str(), s.vmid),
        "type": s.kind.as_str(), "vmid": s.vmid, "name": s.name, "node": s.node,
        "status": broadcast_status(g), "template": u8::from(s.template),
        "maxdisk": 8_589_934_592u64, "disk": if up { 1_073_741_824u64 } else { 0 },
    });
    merge(&mut v, usage::fields(g));
    if !s.tags.is_empty() {
        v["tags"] = json!(s.tags.join(";"));
    }
    if s.ha {
        v["hastate"] = json!(if up { "started" } else { "stopped" });
    }
    if let Some(lock) = &g.lock {
        v["lock"] = json!(lock);
    }
    v
}

/// Adds the fields of `more` (an object) to `v`.
fn merge(v: &mut Value, more: Value) {
    if let (Value::Object(into), Value::Object(from)) = (v, more) {
        into.extend(from);
    }
}

/// `status/current`: live state. Frozen CTs and paused VMs still have a
/// process, so PVE reports them `running`; QEMU adds `qmpstatus`.
fn status_current(g: &Guest) -> Value {
    let s = &g.spec;
    let up = g.power != Power::Stopped;
    let mut v = json!({
        "vmid": s.vmid, "name": s.name, "type": s.kind.as_str(),
        "status": if up { "running" } else { "stopped" },
        "cpus": max_cpu(s.kind), "maxdisk": 8_589_934_592u64, "disk": 0,
        "ha": if s.ha {
            json!({"managed": 1, "state": if up { "started" } else { "stopped" }, "group": null})
        } else {
            json!({"managed": 0})
        },
    });
    merge(&mut v, usage::fields(g));
    if up {
        v["pid"] = json!(10_000 + s.vmid);
    }
    if let Some(lock) = &g.lock {
        v["lock"] = json!(lock);
    }
    if s.template {
        v["template"] = json!(1);
    }
    if !s.tags.is_empty() {
        v["tags"] = json!(s.tags.join(";"));
    }
    if s.kind == GuestKind::Qemu {
        v["qmpstatus"] = json!(match g.power {
            Power::Running => "running",
            Power::Suspended => "paused",
            Power::Prelaunch => "prelaunch",
            Power::Stopped => "stopped",
        });
        if s.agent {
            v["agent"] = json!(1);
        }
        if up {
            v["running-qemu"] = json!("9.2.0");
            v["running-machine"] = json!("pc-i440fx-9.2+pve1");
        }
    }
    v
}

fn config(g: &Guest) -> Value {
    let mut v = match g.spec.kind {
        GuestKind::Lxc => lxc_config(g),
        GuestKind::Qemu => qemu_config(g),
    };
    if let Some(lock) = &g.lock {
        v["lock"] = json!(lock);
    }
    if g.spec.template {
        v["template"] = json!(1);
    }
    v
}

fn ip_setting(g: &Guest) -> String {
    if g.spec.dhcp {
        "dhcp".to_string()
    } else {
        format!("{}/8", g.spec.effective_ip())
    }
}

fn lxc_config(g: &Guest) -> Value {
    let s = &g.spec;
    let mac = format_mac(guest_mac(s.vmid));
    let mut v = json!({
        "hostname": s.name, "arch": "amd64", "ostype": "debian", "cores": 1,
        "memory": 512, "swap": 512, "onboot": 0,
        "rootfs": format!("local-lvm:vm-{}-disk-0,size=8G", s.vmid),
        "net0": format!("name=eth0,bridge=vmbr0,hwaddr={mac},ip={},type=veth", ip_setting(g)),
        "digest": digest(s.vmid),
    });
    if !s.tags.is_empty() {
        v["tags"] = json!(s.tags.join(";"));
    }
    v
}

fn qemu_config(g: &Guest) -> Value {
    let s = &g.spec;
    let mac = format_mac(guest_mac(s.vmid));
    let mut v = json!({
        "name": s.name, "ostype": "l26", "cores": 2, "memory": "2048",
        "boot": "order=scsi0", "scsihw": "virtio-scsi-single",
        "scsi0": format!("local-lvm:vm-{}-disk-0,iothread=1,size=32G", s.vmid),
        "net0": format!("virtio={mac},bridge=vmbr0"),
        "digest": digest(s.vmid),
    });
    if s.agent {
        v["agent"] = json!("1");
    }
    if !s.dhcp {
        v["ipconfig0"] = json!(format!("ip={}/8,gw=127.0.0.1", s.effective_ip()));
    }
    if !s.tags.is_empty() {
        v["tags"] = json!(s.tags.join(";"));
    }
    v
}

/// A stable 40-hex-digit stand-in for the config file's SHA-1.
fn digest(vmid: u32) -> String {
    format!("{:08x}", vmid).repeat(5)
}

fn lxc_interfaces(g: &Guest) -> Result<Value, ApiError> {
    let (Power::Running | Power::Suspended, Some(ip)) = (g.power, g.ip) else {
        return Err(ApiError::Server(format!("CT {} not running", g.spec.vmid)));
    };
    let mac = guest_mac(g.spec.vmid);
    Ok(json!([
        {"name": "lo", "inet": "127.0.0.1/8", "inet6": "::1/128", "hwaddr": "00:00:00:00:00:00"},
        {"name": "eth0", "inet": format!("{ip}/8"), "inet6": format!("{}/64", link_local(mac)),
         "hwaddr": format_mac(mac).to_lowercase()},
    ]))
}

/// The agent is reachable only in a running VM, `agent_delay` after its
/// process came up.
fn agent_interfaces(g: &Guest) -> Result<Value, ApiError> {
    if !g.spec.agent {
        return Err(ApiError::Server(
            "No QEMU guest agent configured".to_string(),
        ));
    }
    if g.power == Power::Stopped {
        return Err(ApiError::Server(format!(
            "VM {} is not running",
            g.spec.vmid
        )));
    }
    let ready = g.power == Power::Running
        && g.up_since
            .is_some_and(|t| t.elapsed() >= g.spec.agent_delay);
    match (ready, g.ip) {
        (true, Some(ip)) => Ok(json!({ "result": agent_result(g.spec.vmid, ip) })),
        _ => Err(ApiError::Server(
            "QEMU guest agent is not running".to_string(),
        )),
    }
}

fn agent_result(vmid: u32, ip: Ipv4Addr) -> Value {
    let mac = guest_mac(vmid);
    json!([
        {"name": "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": [
            {"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8},
            {"ip-address-type": "ipv6", "ip-address": "::1", "prefix": 128}]},
        {"name": "eth0", "hardware-address": format_mac(mac).to_lowercase(), "ip-addresses": [
            {"ip-address-type": "ipv4", "ip-address": ip.to_string(), "prefix": 8},
            {"ip-address-type": "ipv6", "ip-address": link_local(mac).to_string(), "prefix": 64}]},
    ])
}

/// Own tasks are always visible; others' need Sys.Audit on the node.
fn task_status(
    shared: &Shared,
    who: &Principal,
    node: &str,
    upid: &str,
) -> Result<Value, ApiError> {
    known_node(shared, node)?;
    if super::upid::Upid::parse(upid).is_none() {
        return Err(ApiError::Server(format!(
            "unable to parse worker upid '{upid}'"
        )));
    }
    let owner = lock(&shared.tasks).user(upid).map(str::to_string);
    let Some(owner) = owner.filter(|_| upid.split(':').nth(1) == Some(node)) else {
        return Err(ApiError::Server("no such task".to_string()));
    };
    if owner != who.name {
        require(shared, who, &format!("/nodes/{node}"), &["Sys.Audit"])?;
    }
    lock(&shared.tasks)
        .status_json(upid)
        .ok_or_else(|| ApiError::Server("no such task".to_string()))
}
