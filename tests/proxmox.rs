//! The Proxmox client, poller, cache and power actions against the simulated
//! cluster over real sockets (TLS included).

use drowsy::admin::metrics::Metrics;
use drowsy::config::{GuestKey, GuestRef, ProxmoxSettings, PveAuth, Secret};
use drowsy::proxmox::power::{self, PowerAction};
use drowsy::proxmox::{
    ClientOptions, ClusterCache, Guest, GuestKind, GuestStatus, Poller, PollerHandle,
    PollerOptions, PveClient, PveError,
};
use drowsy::sim::{
    Fault, FaultKind, GuestSpec, Sim, SimOptions, PASSWORD, TOKEN_ID, TOKEN_SECRET, USERNAME,
};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout, Instant};

const DEADLINE: Duration = Duration::from_secs(10);
const TASK_DEADLINE: Duration = Duration::from_secs(5);

struct Env {
    sim: Sim,
    _dir: tempfile::TempDir,
    ca: PathBuf,
}

async fn env(guests: Vec<GuestSpec>) -> Env {
    env_with(SimOptions {
        guests,
        ..SimOptions::default()
    })
    .await
}

async fn env_with(mut opts: SimOptions) -> Env {
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.nodes = vec!["pve1".into(), "pve2".into()];
    // Guest addresses derive from the vmid; own ports keep tests that run
    // at the same time (threads or processes) from sharing a listener.
    for g in &mut opts.guests {
        g.port = free_port();
    }
    opts.resources_refresh = Duration::ZERO;
    opts.task_delay = Duration::from_millis(20);
    let sim = Sim::start(opts).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("pve-root-ca.pem");
    sim.write_ca(&ca).unwrap();
    Env { sim, _dir: dir, ca }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn token() -> PveAuth {
    PveAuth::Token {
        token_id: TOKEN_ID.into(),
        secret: Secret::new(TOKEN_SECRET),
    }
}

fn ticket() -> PveAuth {
    PveAuth::Ticket {
        username: USERNAME.into(),
        password: Secret::new(PASSWORD),
    }
}

impl Env {
    fn settings(&self, auth: PveAuth) -> ProxmoxSettings {
        ProxmoxSettings {
            name: Arc::from("home"),
            url: self.sim.url().parse().unwrap(),
            auth,
            ca_file: Some(self.ca.clone()),
            insecure_skip_verify: false,
            insecure_loopback_guests: true,
            poll_interval: Duration::from_millis(30),
            request_timeout: Duration::from_secs(2),
            nodes: Vec::new(),
        }
    }

    fn client(&self, auth: PveAuth) -> Arc<PveClient> {
        Arc::new(PveClient::new(&self.settings(auth), Arc::new(Metrics::new())).unwrap())
    }

    fn poller(&self, client: Arc<PveClient>) -> (Arc<ClusterCache>, PollerHandle) {
        let cache = Arc::new(ClusterCache::new());
        let handle = Poller::spawn(
            client,
            cache.clone(),
            PollerOptions {
                interval: Duration::from_millis(30),
            },
        );
        (cache, handle)
    }
}

fn vmid_ref(vmid: u32) -> GuestRef {
    GuestRef {
        key: GuestKey::Vmid(vmid),
        cluster: None,
    }
}

fn name_ref(name: &str) -> GuestRef {
    GuestRef {
        key: GuestKey::Name(name.into()),
        cluster: None,
    }
}

/// Waits until `cond` holds on the cache, woken by each cache change.
async fn cache_until(cache: &ClusterCache, what: &str, cond: impl Fn(&ClusterCache) -> bool) {
    let mut rx = cache.subscribe();
    let until = Instant::now() + DEADLINE;
    while !cond(cache) {
        let left = until.saturating_duration_since(Instant::now());
        if timeout(left, rx.changed()).await.is_err() {
            panic!("timed out waiting for: {what}; cache: {:#?}", cache.all());
        }
    }
}

/// Waits for `n` more successful polls.
async fn polls(handle: &PollerHandle, n: u64) {
    let mut rx = handle.polls();
    let start = *rx.borrow_and_update();
    let wait = async {
        while *rx.borrow_and_update() < start + n {
            if rx.changed().await.is_err() {
                panic!("poller ended");
            }
        }
    };
    timeout(DEADLINE, wait).await.expect("polls in time");
}

async fn within<T>(f: impl Future<Output = T>) -> T {
    timeout(DEADLINE, f).await.expect("within the deadline")
}

fn ips(g: &Option<Guest>) -> Vec<IpAddr> {
    g.as_ref().map(|g| g.ips.clone()).unwrap_or_default()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[tokio::test]
async fn token_auth_reads_resources_and_counts_metrics() {
    let e = env(vec![GuestSpec::lxc(105, "wiki").running(true)]).await;
    let metrics = Arc::new(Metrics::new());
    let client = PveClient::new(&e.settings(token()), metrics.clone()).unwrap();
    let data = within(client.get("/cluster/resources?type=vm", "/cluster/resources"))
        .await
        .unwrap();
    let list = data.as_array().unwrap();
    assert!(list.iter().any(|r| r["vmid"] == 105));
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"drowsy_pve_requests_total{cluster="home",endpoint="/cluster/resources",code="200"} 1"#
        ),
        "{text}"
    );
    assert!(!format!("{client:?}").contains(TOKEN_SECRET));
}

#[tokio::test]
async fn wrong_token_is_a_clear_error_without_retries() {
    let e = env(vec![GuestSpec::lxc(105, "wiki")]).await;
    let client = e.client(PveAuth::Token {
        token_id: TOKEN_ID.into(),
        secret: Secret::new("not-the-secret"),
    });
    e.sim.reset_counters();
    let err = within(client.get("/cluster/resources?type=vm", "/cluster/resources"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(err.is_auth(), "{msg}");
    assert!(msg.contains("home"), "{msg}");
    assert!(
        msg.contains(
            "authentication failed (401 authentication failure): check token_id/token_secret"
        ),
        "{msg}"
    );
    assert!(!msg.contains("not-the-secret"));
    assert_eq!(e.sim.total_calls(), 1, "{:?}", e.sim.call_counts());

    // A poller with that token: one failing call per cycle, no storm.
    let (_cache, handle) = e.poller(client);
    let mut errors = handle.errors();
    within(errors.wait_for(Option::is_some)).await.unwrap();
    handle.shutdown().await;
    let calls = e.sim.total_calls();
    assert_eq!(calls, e.sim.calls("GET /cluster/resources"));
    assert!(calls <= 3, "{:?}", e.sim.call_counts());
}

#[tokio::test]
async fn wrong_password_is_one_login_attempt() {
    let e = env(vec![]).await;
    let client = e.client(PveAuth::Ticket {
        username: USERNAME.into(),
        password: Secret::new("wrong"),
    });
    e.sim.reset_counters();
    let err = within(client.get("/cluster/status", "/cluster/status"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("check username/password"), "{err}");
    assert_eq!(e.sim.calls("POST /access/ticket"), 1);
    assert_eq!(e.sim.total_calls(), 1);
}

#[tokio::test]
async fn ticket_auth_sends_csrf_on_power_actions() {
    let e = env(vec![GuestSpec::lxc(105, "wiki")]).await;
    let client = e.client(ticket());
    e.sim.reset_counters();
    let upid = within(power::request(
        &client,
        "pve1",
        GuestKind::Lxc,
        105,
        PowerAction::Start,
    ))
    .await
    .unwrap();
    assert_eq!(upid.node, "pve1");
    assert_eq!(upid.user, USERNAME);
    within(power::wait_task(&client, &upid, TASK_DEADLINE))
        .await
        .unwrap();
    assert!(e.sim.wait_guest_listening(105, DEADLINE).await);
    // One login serves every call while the ticket is young.
    assert_eq!(e.sim.calls("POST /access/ticket"), 1);
}

#[tokio::test]
async fn ticket_is_renewed_before_it_expires() {
    let e = env(vec![]).await;
    let client = PveClient::with_options(
        &e.settings(ticket()),
        Arc::new(Metrics::new()),
        ClientOptions {
            ticket_renew_after: Duration::from_millis(100),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    e.sim.set_ticket_lifetime(Duration::from_secs(5));
    e.sim.reset_counters();
    within(client.get("/cluster/status", "/cluster/status"))
        .await
        .unwrap();
    // The ticket must age past the renewal point; only time does that.
    tokio::time::sleep(Duration::from_millis(150)).await;
    within(client.get("/cluster/status", "/cluster/status"))
        .await
        .unwrap();
    assert_eq!(e.sim.calls("POST /access/ticket"), 2);
    assert_eq!(e.sim.calls("GET /cluster/status"), 2, "no 401 on the way");
}

#[tokio::test]
async fn expired_ticket_logs_in_again_once() {
    let e = env(vec![]).await;
    let client = e.client(ticket());
    e.sim.set_ticket_lifetime(Duration::from_millis(300));
    within(client.get("/cluster/status", "/cluster/status"))
        .await
        .unwrap();
    // Let the server expire the ticket while the client still trusts it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    e.sim.reset_counters();
    within(client.get("/cluster/status", "/cluster/status"))
        .await
        .unwrap();
    assert_eq!(e.sim.calls("POST /access/ticket"), 1);
    assert_eq!(e.sim.calls("GET /cluster/status"), 2, "one 401, one retry");
}

#[tokio::test]
async fn tls_needs_the_ca_or_insecure() {
    let e = env(vec![]).await;
    let mut s = e.settings(token());
    s.ca_file = None;
    let client = PveClient::new(&s, Arc::new(Metrics::new())).unwrap();
    let err = within(client.get("/cluster/status", "/cluster/status"))
        .await
        .unwrap_err();
    assert!(matches!(err, PveError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("ca_file"), "{err}");

    s.insecure_skip_verify = true;
    let client = PveClient::new(&s, Arc::new(Metrics::new())).unwrap();
    within(client.get("/cluster/status", "/cluster/status"))
        .await
        .unwrap();

    // And with the CA file, verification succeeds (the default path).
    within(e.client(token()).get("/version", "/version"))
        .await
        .unwrap();
}

#[tokio::test]
async fn missing_privilege_names_the_grant() {
    let e = env(vec![GuestSpec::lxc(105, "wiki")]).await;
    e.sim.set_privileges(TOKEN_ID, &["VM.Audit", "Sys.Audit"]);
    let client = e.client(token());
    let err = within(power::request(
        &client,
        "pve1",
        GuestKind::Lxc,
        105,
        PowerAction::Start,
    ))
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PveError::Permission { .. }), "{msg}");
    assert!(
        msg.contains(&format!(
            "token {TOKEN_ID} lacks VM.PowerMgmt on /vms/105: grant it"
        )),
        "{msg}"
    );
}

#[tokio::test]
async fn discovers_guests_and_ips() {
    let e = env(vec![
        GuestSpec::lxc(105, "wiki").running(true).tags(&["web"]),
        GuestSpec::lxc(106, "db").node("pve2"),
        GuestSpec::lxc(107, "dyn").dhcp(),
        GuestSpec::qemu(200, "media").running(true),
        GuestSpec::qemu(201, "vmdyn").dhcp(),
        GuestSpec::lxc(300, "unneeded").running(true),
    ])
    .await;
    let client = e.client(token());
    let (cache, handle) = e.poller(client);
    handle.set_needed([105, 106, 107, 200, 201].map(vmid_ref));
    cache_until(&cache, "static IPs known", |c| {
        [105, 106, 200]
            .iter()
            .all(|id| c.get("home", *id).is_some_and(|g| !g.ips.is_empty()))
    })
    .await;
    let wiki = cache.get("home", 105);
    assert_eq!(ips(&wiki), vec![v4(127, 0, 1, 105)]);
    let wiki = wiki.unwrap();
    assert_eq!(
        (wiki.kind, &wiki.status),
        (GuestKind::Lxc, &GuestStatus::Running)
    );
    assert_eq!(wiki.tags, vec!["web"]);
    // Stopped LXC: from the ip= of its netN config entry.
    let db = cache.get("home", 106).unwrap();
    assert_eq!(
        (db.node.as_str(), &db.status),
        ("pve2", &GuestStatus::Stopped)
    );
    assert_eq!(db.ips, vec![v4(127, 0, 1, 106)]);
    assert_eq!(ips(&cache.get("home", 200)), vec![v4(127, 0, 1, 200)]);
    // DHCP while stopped: unknown. Never looked up: not needed.
    assert!(ips(&cache.get("home", 107)).is_empty());
    assert!(ips(&cache.get("home", 201)).is_empty());
    assert!(ips(&cache.get("home", 300)).is_empty());
    assert_eq!(e.sim.calls("GET /nodes/{node}/lxc/{vmid}/interfaces"), 1);
    assert!(handle.nodes().contains(&"pve2".to_string()));

    // Started by hand: the poller notices, and the address shows up.
    e.sim.start_guest_outside(107);
    cache_until(&cache, "dhcp LXC address after start", |c| {
        c.get("home", 107)
            .is_some_and(|g| g.status.is_running() && g.ips == vec![v4(127, 0, 1, 107)])
    })
    .await;
    handle.shutdown().await;
}

#[tokio::test]
async fn qemu_address_appears_after_the_agent_lag() {
    let e = env(vec![GuestSpec::qemu(201, "vmdyn")
        .dhcp()
        .agent_delay(Duration::from_secs(1))])
    .await;
    let client = e.client(token());
    let (cache, handle) = e.poller(client);
    handle.set_needed([name_ref("vmdyn.home.arpa")]);
    let mut changes = cache.changes();
    e.sim.start_guest_outside(201);
    cache_until(&cache, "VM seen running", |c| {
        c.get("home", 201).is_some_and(|g| g.status.is_running())
    })
    .await;
    let change = within(changes.recv()).await.unwrap();
    assert_eq!(change.vmid, 201);
    // The agent fails for a while after boot: not known yet, but retried.
    assert!(ips(&cache.get("home", 201)).is_empty());
    assert!(
        e.sim
            .calls("GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces")
            >= 1
    );
    cache_until(&cache, "agent address", |c| {
        ips(&c.get("home", 201)) == vec![v4(127, 0, 1, 201)]
    })
    .await;
    handle.shutdown().await;
}

#[tokio::test]
async fn reverse_lookup_by_each_key() {
    let e = env(vec![
        GuestSpec::lxc(105, "wiki").running(true),
        GuestSpec::lxc(106, "Wiki").node("pve2").running(true),
        GuestSpec::qemu(200, "media").running(true),
    ])
    .await;
    let client = e.client(token());
    let (cache, handle) = e.poller(client);
    handle.set_needed([vmid_ref(200)]);
    cache_until(&cache, "media IP", |c| !ips(&c.get("home", 200)).is_empty()).await;
    let by = |key: GuestKey| cache.resolve(&GuestRef { key, cluster: None });
    assert_eq!(by(GuestKey::Vmid(200)).unwrap().unwrap().name, "media");
    assert_eq!(
        by(GuestKey::Name("MEDIA.home.arpa".into()))
            .unwrap()
            .unwrap()
            .vmid,
        200
    );
    assert_eq!(
        by(GuestKey::Ip(v4(127, 0, 1, 200))).unwrap().unwrap().vmid,
        200
    );
    assert_eq!(
        by(GuestKey::Name("127.0.1.200".into()))
            .unwrap()
            .unwrap()
            .vmid,
        200
    );
    assert!(by(GuestKey::Vmid(999)).unwrap().is_none());
    let err = by(GuestKey::Name("wiki".into())).unwrap_err().to_string();
    assert!(
        err.contains("home/pve1/105") && err.contains("home/pve2/106"),
        "{err}"
    );
    let host = cache.guest_for_host("127.0.1.200", None).unwrap();
    assert_eq!(host.map(|g| g.vmid), Some(200));
    handle.shutdown().await;
}

#[tokio::test]
async fn power_actions_wait_for_their_tasks() {
    let e = env(vec![
        GuestSpec::lxc(105, "wiki"),
        GuestSpec::qemu(200, "media").running(true),
        GuestSpec::lxc(110, "broken").fail_start("startup for container '110' failed"),
        GuestSpec::qemu(120, "ha-vm").ha(),
    ])
    .await;
    let client = e.client(token());
    let (cache, handle) = e.poller(client.clone());
    cache_until(&cache, "guests listed", |c| c.all().len() == 4).await;
    let guest = |id| cache.get("home", id).unwrap();

    let out = within(power::run(
        &client,
        &guest(105),
        PowerAction::Start,
        TASK_DEADLINE,
    ))
    .await
    .unwrap();
    assert_eq!(out.exitstatus, "OK");
    assert_eq!(out.upid.task_type, "vzstart");
    assert!(e.sim.wait_guest_listening(105, DEADLINE).await);
    let shutdown = PowerAction::Shutdown {
        timeout: Duration::from_secs(5),
    };
    within(power::run(&client, &guest(105), shutdown, TASK_DEADLINE))
        .await
        .unwrap();
    assert_eq!(e.sim.guest_status(105), Some("stopped"));

    within(power::run(
        &client,
        &guest(200),
        PowerAction::Suspend,
        TASK_DEADLINE,
    ))
    .await
    .unwrap();
    within(power::run(
        &client,
        &guest(200),
        PowerAction::Resume,
        TASK_DEADLINE,
    ))
    .await
    .unwrap();
    within(power::run(
        &client,
        &guest(200),
        PowerAction::Stop,
        TASK_DEADLINE,
    ))
    .await
    .unwrap();
    assert_eq!(e.sim.guest_status(200), Some("stopped"));

    let err = within(power::run(
        &client,
        &guest(110),
        PowerAction::Start,
        TASK_DEADLINE,
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(err, PveError::TaskFailed { ref exitstatus, .. } if exitstatus.contains("startup for container '110' failed")),
        "{err}"
    );

    // HA: the task is the HA request; the guest comes up on its own.
    let out = within(power::run(
        &client,
        &guest(120),
        PowerAction::Start,
        TASK_DEADLINE,
    ))
    .await
    .unwrap();
    assert_eq!(out.upid.task_type, "hastart");
    assert!(e.sim.wait_guest_listening(120, DEADLINE).await);
    assert!(e.sim.calls("GET /nodes/{node}/tasks/{upid}/status") >= 5);
    handle.shutdown().await;
}

#[tokio::test]
async fn refresh_on_demand_finds_a_fresh_dhcp_address() {
    let e = env(vec![GuestSpec::lxc(107, "dyn").dhcp()]).await;
    let client = e.client(token());
    let (cache, handle) = e.poller(client.clone());
    cache_until(&cache, "guest listed", |c| c.get("home", 107).is_some()).await;
    let g = cache.get("home", 107).unwrap();
    within(power::run(&client, &g, PowerAction::Start, TASK_DEADLINE))
        .await
        .unwrap();
    let g = within(handle.refresh_ips(107)).await.unwrap();
    assert_eq!(g.ips, vec![v4(127, 0, 1, 107)]);
    assert_eq!(ips(&cache.get("home", 107)), g.ips);
    assert!(matches!(
        handle.refresh_ips(999).await,
        Err(PveError::UnknownGuest { vmid: 999, .. })
    ));
    handle.shutdown().await;
}

#[tokio::test]
async fn one_api_call_per_cycle_with_500_guests() {
    let guests = (1000..1500)
        .map(|id| {
            GuestSpec::lxc(id, &format!("g{id}"))
                .node(if id % 2 == 0 { "pve1" } else { "pve2" })
                .running(id % 3 == 0)
        })
        .collect();
    let e = env(guests).await;
    let client = e.client(token());
    let (cache, handle) = e.poller(client);
    handle.set_needed([vmid_ref(1002), vmid_ref(1003)]);
    cache_until(&cache, "needed IPs", |c| {
        [1002, 1003]
            .iter()
            .all(|id| !ips(&c.get("home", *id)).is_empty())
    })
    .await;
    assert_eq!(cache.all().len(), 500);
    polls(&handle, 1).await;
    e.sim.reset_counters();
    polls(&handle, 5).await;
    handle.shutdown().await;
    let resources = e.sim.calls("GET /cluster/resources");
    let total = e.sim.total_calls();
    // A cycle cancelled by the shutdown may have sent its call already.
    assert!(resources >= 5, "{resources}");
    assert_eq!(total, resources, "{:?}", e.sim.call_counts());
}

#[tokio::test]
async fn outage_keeps_the_last_good_cache_and_recovers() {
    let e = env(vec![
        GuestSpec::lxc(105, "wiki").running(true),
        GuestSpec::qemu(200, "media"),
    ])
    .await;
    let mut s = e.settings(token());
    s.request_timeout = Duration::from_millis(200);
    let client = Arc::new(PveClient::new(&s, Arc::new(Metrics::new())).unwrap());
    let (cache, handle) = e.poller(client);
    handle.set_needed([vmid_ref(105)]);
    cache_until(&cache, "IP known", |c| !ips(&c.get("home", 105)).is_empty()).await;
    let before = cache.all();

    e.sim.inject_fault(Fault {
        path_contains: Some("/cluster/resources".into()),
        kind: FaultKind::Status500("cluster not ready - no quorum?".into()),
        count: Some(3),
    });
    e.sim.inject_fault(Fault {
        path_contains: Some("/cluster/resources".into()),
        kind: FaultKind::Hang,
        count: Some(2),
    });
    let mut errors = handle.errors();
    let err = within(errors.wait_for(Option::is_some))
        .await
        .unwrap()
        .clone()
        .unwrap_or_default();
    assert!(err.contains("no quorum"), "{err}");
    assert_eq!(cache.all(), before, "last good cache kept");
    let mut rx = handle.polls();
    rx.borrow_and_update();
    let err = within(errors.wait_for(|e| e.as_ref().is_some_and(|e| e.contains("no answer"))))
        .await
        .unwrap()
        .clone()
        .unwrap_or_default();
    assert!(err.contains("home"), "{err}");
    assert_eq!(cache.all(), before, "kept while the API hangs");
    // Recovery: the next successful poll after all faults are used up.
    within(rx.changed()).await.unwrap();
    assert!(handle.last_error().is_none());
    assert!(e.sim.calls("GET /cluster/resources") >= 6);
    // The same guests; only their usage figures moved on.
    let same = |mut gs: Vec<drowsy::proxmox::Guest>| {
        gs.iter_mut().for_each(|g| g.usage = Default::default());
        gs
    };
    assert_eq!(same(cache.all()), same(before));
    handle.shutdown().await;
}
