//! Routes from Proxmox tags (`auto_routes`), against the simulated
//! cluster: they appear and disappear with the tag on the next poll,
//! without a reload and without API calls of their own; routes in the file
//! win; conflicts route neither guest; their gates survive other changes.

mod common;

use common::*;
use drowsy::idle::GuestState;
use drowsy::sim::GuestSpec;
use http::StatusCode;
use std::sync::Arc;

fn config(env: &SimEnv, auto: &str, routes: &str) -> String {
    format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  shutdown_timeout: 1s\n{}auto_routes:\n  domain: home.arpa\n{auto}routes:\n{routes}",
        env.proxmox_yaml()
    )
}

/// The tags that route a simulated guest: the opt-in tag and its port.
fn tags(env: &SimEnv, vmid: u32) -> Vec<String> {
    vec!["drowsy".to_string(), format!("port-{}", env.port(vmid))]
}

fn tag(env: &SimEnv, vmid: u32, extra: &[&str]) {
    let mut t = tags(env, vmid);
    t.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = t.iter().map(String::as_str).collect();
    env.sim.set_tags(vmid, &refs);
}

fn auto_hosts(d: &Drowsy) -> Vec<String> {
    d.running
        .auto_routes()
        .iter()
        .map(|r| r.hosts[0].to_string())
        .collect()
}

/// Waits (on applied route changes) until the routes from tags are `want`.
async fn wait_auto(d: &Drowsy, want: &[&str]) {
    let mut changes = d.running.reloads();
    let wait = async {
        loop {
            if auto_hosts(d) == want {
                return;
            }
            changes.changed().await.expect("running");
        }
    };
    if tokio::time::timeout(DEADLINE, wait).await.is_err() {
        panic!("routes from tags are {:?}, want {want:?}", auto_hosts(d));
    }
}

/// Waits until a warning about the tags mentions all of `words`.
async fn wait_warning(d: &Drowsy, words: &[&str]) -> String {
    let cache = d.running.clusters.as_ref().expect("clusters").cache.clone();
    let mut polls = cache.subscribe();
    let find = || {
        d.running
            .auto_warnings()
            .into_iter()
            .find(|w| words.iter().all(|x| w.contains(x)))
    };
    let wait = async {
        loop {
            if let Some(w) = find() {
                return w;
            }
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(200), polls.changed()).await;
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("no warning with {words:?}: {:?}", d.running.auto_warnings()))
}

async fn admin_routes(d: &Drowsy) -> serde_json::Value {
    let admin = d.running.admin_addr.expect("admin");
    let (s, _, body) = get(admin, &admin.to_string(), "/api/routes").await;
    assert_eq!(s, StatusCode::OK);
    json_of(&body)
}

#[tokio::test]
async fn a_tag_adds_and_removes_a_route_on_the_next_poll_without_extra_calls() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki"),
        GuestSpec::lxc(106, "Media").running(true),
        GuestSpec::lxc(107, "db"),
    ])
    .await;
    tag(&env, 105, &[]);
    let d = Drowsy::start(&config(&env, "  idle_timeout: 10m\n", "")).await;
    wait_auto(&d, &["wiki.home.arpa"]).await;

    // The route wakes its sleeping guest like any other.
    let (s, _, body) = get(d.http(), "wiki.home.arpa", "/").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_of(&body)["guest"], "wiki");
    assert_eq!(d.gate("wiki").state(), GuestState::Running);
    let routes = admin_routes(&d).await;
    assert_eq!(routes["wiki"]["auto"], true);
    assert_eq!(routes["wiki"]["hosts"][0], "wiki.home.arpa");
    assert_eq!(routes["wiki"]["state"], "running");

    // Tagging another guest routes it on the next poll: no reload, and no
    // API call but the poll itself and the new guest's address lookup.
    let reloads_before = *d.running.reloads().borrow();
    env.sim.reset_counters();
    tag(&env, 106, &[]);
    wait_auto(&d, &["wiki.home.arpa", "media.home.arpa"]).await;
    let (s, _, body) = get(d.http(), "media.home.arpa", "/x").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_of(&body)["guest"], "Media");
    for (endpoint, _) in env.sim.call_counts() {
        assert!(
            matches!(
                endpoint.as_str(),
                "GET /cluster/resources"
                    | "GET /nodes/{node}/lxc/{vmid}/interfaces"
                    | "GET /nodes/{node}/lxc/{vmid}/config"
            ),
            "a tag change made the call {endpoint}"
        );
    }
    assert!(d.running.gates().expect("gates").binding("media").is_some());
    assert!(*d.running.reloads().borrow() > reloads_before);

    // Taking the tag away removes the route; the other one stays.
    env.sim.set_tags(105, &["something-else"]);
    wait_auto(&d, &["media.home.arpa"]).await;
    assert_eq!(
        get(d.http(), "wiki.home.arpa", "/").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(d.http(), "media.home.arpa", "/").await.0,
        StatusCode::OK
    );
    assert!(admin_routes(&d).await.get("wiki").is_none());
}

#[tokio::test]
async fn two_guests_with_one_host_get_neither_and_one_warning_names_both() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").running(true),
        GuestSpec::lxc(106, "wiki").running(true),
        GuestSpec::lxc(107, "git").running(true),
        GuestSpec::lxc(108, "bad_name").running(true),
    ])
    .await;
    for vmid in [105, 106, 107, 108] {
        tag(&env, vmid, &[]);
    }
    let d = Drowsy::start(&config(&env, "", "")).await;
    wait_auto(&d, &["git.home.arpa"]).await;
    let w = wait_warning(&d, &["wiki.home.arpa"]).await;
    assert!(
        w.contains("home/105 (wiki)") && w.contains("home/106 (wiki)"),
        "{w}"
    );
    assert_eq!(
        d.running
            .auto_warnings()
            .iter()
            .filter(|w| w.contains("wiki.home.arpa"))
            .count(),
        1
    );
    wait_warning(&d, &["bad_name", "not a valid DNS label"]).await;
    assert_eq!(
        get(d.http(), "wiki.home.arpa", "/").await.0,
        StatusCode::NOT_FOUND
    );

    // Once one of them loses the tag, the other gets the host.
    env.sim.set_tags(106, &[]);
    wait_auto(&d, &["wiki.home.arpa", "git.home.arpa"]).await;
    let (s, _, body) = get(d.http(), "wiki.home.arpa", "/").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&body)["vmid"], 105);
}

#[tokio::test]
async fn routes_in_the_file_win_over_tags_for_the_same_guest_host_or_name() {
    let backend = Backend::start().await;
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki").running(true),
        GuestSpec::lxc(106, "media").running(true),
        GuestSpec::lxc(107, "git").running(true),
        GuestSpec::lxc(108, "notes").running(true),
    ])
    .await;
    for vmid in [105, 106, 107, 108] {
        tag(&env, vmid, &[]);
    }
    let routes = format!(
        // The same guest (by name), under another host.
        "  mywiki:\n    host: wiki.lan\n    guest: wiki\n    port: {}\n\
         # The same host, to somewhere else.
  mediaproxy:\n    host: media.home.arpa\n    backend: {}\n\
         # The same route name, for another guest.
  git:\n    host: git.lan\n    guest: 108\n    port: {}\n",
        env.port(105),
        backend.url(),
        env.port(108)
    );
    let d = Drowsy::start(&config(&env, "", &routes)).await;
    wait_warning(&d, &["guest home/107", "named `git`"]).await;
    // notes is tagged too, but the file's `git` route reaches it: no
    // route from its tag either.
    assert!(auto_hosts(&d).is_empty(), "{:?}", auto_hosts(&d));
    assert_eq!(
        get(d.http(), "wiki.home.arpa", "/").await.0,
        StatusCode::NOT_FOUND
    );
    let (s, _, body) = get(d.http(), "media.home.arpa", "/from-file").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        json_of(&body)["uri"],
        "/from-file",
        "the file's backend answered"
    );
    assert_eq!(get(d.http(), "wiki.lan", "/").await.0, StatusCode::OK);

    // Removing the file's route for the guest (a reload) lets the tag route it.
    std::fs::write(
        d.path("drowsy.yml"),
        config(
            &env,
            "",
            &format!(
                "  mediaproxy:\n    host: media.home.arpa\n    backend: {}\n",
                backend.url()
            ),
        ),
    )
    .expect("write");
    d.running.reload_from_file().await.expect("reload");
    wait_auto(&d, &["wiki.home.arpa", "git.home.arpa", "notes.home.arpa"]).await;
    assert_eq!(
        json_of(&get(d.http(), "wiki.home.arpa", "/").await.2)["vmid"],
        105
    );
}

#[tokio::test]
async fn a_websocket_through_a_route_from_a_tag_survives_other_tag_changes_and_reloads() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(105, "wiki"),
        GuestSpec::lxc(106, "media").running(true),
    ])
    .await;
    tag(&env, 105, &[]);
    let yaml = config(&env, "  idle_timeout: 300ms\n", "");
    let d = Drowsy::start(&yaml).await;
    wait_auto(&d, &["wiki.home.arpa"]).await;
    let mut ws = ws_connect(&d, "wiki.home.arpa").await;
    ws_echo(&mut ws, "before").await;
    let gate = d.gate("wiki");
    assert_eq!(gate.state(), GuestState::Running);
    assert_eq!(gate.activity.inflight(), 1);

    // Another guest's tag changes the route table twice.
    tag(&env, 106, &[]);
    wait_auto(&d, &["wiki.home.arpa", "media.home.arpa"]).await;
    env.sim.set_tags(106, &[]);
    wait_auto(&d, &["wiki.home.arpa"]).await;
    // And a reload of the file keeps the routes from tags.
    d.running.reload_from_file().await.expect("reload");
    assert_eq!(auto_hosts(&d), ["wiki.home.arpa"]);

    // Same gate, still counting the open socket, which still works; the
    // guest stayed up far beyond its idle timeout.
    assert!(Arc::ptr_eq(&gate, &d.gate("wiki")));
    assert_eq!(gate.activity.inflight(), 1);
    ws_echo(&mut ws, "after").await;
    assert_eq!(gate.state(), GuestState::Running);
    drop(ws);
    wait_state(&gate, GuestState::Stopped).await;
}
