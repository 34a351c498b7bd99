//! Guest routes without sleeping: requests follow the guest's current IP from
//! the cluster cache, and fail clearly when the guest cannot be reached.

mod common;

use common::*;
use drowsy::sim::{Fault, FaultKind, GuestSpec};
use http::StatusCode;

fn config(env: &SimEnv, routes: &str) -> String {
    format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{}routes:\n{routes}",
        env.proxmox_yaml()
    )
}

#[tokio::test]
async fn guest_route_proxies_to_the_guest_ip() {
    let env = SimEnv::start(vec![GuestSpec::lxc(106, "whoami").running(true)]).await;
    let d = Drowsy::start(&config(
        &env,
        &format!(
            "  whoami:\n    host: whoami.lan\n    guest: whoami\n    port: {}\n",
            env.port(106)
        ),
    ))
    .await;
    wait_cache(&d.running, "whoami's IP", |s| {
        s.get("home", 106).is_some_and(|g| !g.ips.is_empty())
    })
    .await;
    let (s, _, body) = get(d.http(), "whoami.lan", "/hello").await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    let v = json_of(&body);
    assert_eq!(v["guest"], "whoami");
    assert_eq!(v["path"], "/hello");
}

#[tokio::test]
async fn stopped_or_unknown_guests_get_503_naming_the_reason() {
    let env = SimEnv::start(vec![GuestSpec::lxc(105, "wiki")]).await;
    let d = Drowsy::start(&config(
        &env,
        &format!("  wiki:\n    host: wiki.lan\n    guest: 105\n    port: {}\n  ghost:\n    host: ghost.lan\n    guest: ghost\n    port: 80\n", env.port(105)),
    ))
    .await;
    wait_cache(&d.running, "the first poll", |s| {
        s.get("home", 105).is_some()
    })
    .await;
    let (s, h, body) = get(d.http(), "wiki.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key("retry-after"));
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("route wiki") && text.contains("stopped"),
        "{text}"
    );
    let (s, _, body) = get(d.http(), "ghost.lan", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("route ghost: the service is not available"),
        "{text}"
    );
    // The reason is the operator's: in the admin API.
    let admin = d.running.admin_addr.expect("admin");
    let (_, _, body) = get(admin, "localhost", "/api/routes").await;
    let v = json_of(&body);
    let error = v["ghost"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("no guest matches name \"ghost\""), "{v}");
}

#[tokio::test]
async fn api_guests_lists_the_cluster_cache() {
    let env = SimEnv::start(vec![
        GuestSpec::lxc(106, "whoami").running(true),
        GuestSpec::qemu(200, "media"),
    ])
    .await;
    let d = Drowsy::start(&config(
        &env,
        &format!(
            "  whoami:\n    host: whoami.lan\n    guest: 106\n    port: {}\n",
            env.port(106)
        ),
    ))
    .await;
    wait_cache(&d.running, "both guests", |s| {
        s.guests().len() == 2 && s.get("home", 106).is_some_and(|g| !g.ips.is_empty())
    })
    .await;
    let admin = d.running.admin_addr.expect("admin");
    let (s, _, body) = get(admin, "localhost", "/api/guests").await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&body);
    let list = v.as_array().expect("array");
    let whoami = list.iter().find(|g| g["vmid"] == 106).expect("106");
    assert_eq!(whoami["name"], "whoami");
    assert_eq!(whoami["type"], "lxc");
    assert_eq!(whoami["status"], "running");
    assert_eq!(whoami["cluster"], "home");
    assert_eq!(
        whoami["ips"][0],
        env.sim.guest_addr(106).expect("addr").ip().to_string()
    );
    let media = list.iter().find(|g| g["vmid"] == 200).expect("200");
    assert_eq!(
        (media["type"].as_str(), media["status"].as_str()),
        (Some("qemu"), Some("stopped"))
    );
}

#[tokio::test]
async fn running_routes_keep_serving_while_proxmox_is_unreachable() {
    let env = SimEnv::start(vec![GuestSpec::lxc(106, "whoami").running(true)]).await;
    let d = Drowsy::start(&config(
        &env,
        &format!(
            "  whoami:\n    host: whoami.lan\n    guest: whoami\n    port: {}\n",
            env.port(106)
        ),
    ))
    .await;
    wait_cache(&d.running, "whoami's IP", |s| {
        s.get("home", 106).is_some_and(|g| !g.ips.is_empty())
    })
    .await;
    let clusters = d.running.clusters.clone().expect("clusters");
    let poller = clusters.poller("home").expect("poller");
    let mut errors = poller.errors();
    env.sim.inject_fault(Fault {
        path_contains: None,
        kind: FaultKind::Status500("outage".into()),
        count: None,
    });
    tokio::time::timeout(DEADLINE, errors.wait_for(|e| e.is_some()))
        .await
        .expect("outage never seen")
        .expect("watch");
    let (s, _, _) = get(d.http(), "whoami.lan", "/during-outage").await;
    assert_eq!(s, StatusCode::OK);
    env.sim.clear_faults();
    tokio::time::timeout(DEADLINE, errors.wait_for(|e| e.is_none()))
        .await
        .expect("never recovered")
        .expect("watch");
    let (s, _, _) = get(d.http(), "whoami.lan", "/after").await;
    assert_eq!(s, StatusCode::OK);
}
