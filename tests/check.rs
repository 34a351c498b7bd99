//! `drowsy check`: the exit code and `file:line:col: message` of config
//! errors, as a user sees them from the real binary.

use std::process::Command;

fn check(yaml: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drowsy.yml");
    std::fs::write(&path, yaml).expect("write");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drowsy"));
    cmd.arg("check")
        .arg("--config")
        .arg(&path)
        .env_remove("PVE_TOKEN_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run drowsy");
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "drowsy.yml");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

const HEAD: &str = "listen:\n  http: 127.0.0.1:8080\n";

#[test]
fn unknown_key_is_located_with_a_hint() {
    let (code, _, err) = check(
        &format!("{HEAD}routes:\n  wiki:\n    hots: wiki.lan\n    backend: http://10.0.0.5\n"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.starts_with("drowsy.yml:5:5: routes.wiki: unknown key `hots`"),
        "{err}"
    );
    assert!(err.contains("did you mean `host"), "{err}");
}

#[test]
fn bad_duration_is_located() {
    let (code, _, err) = check(&format!("{HEAD}defaults:\n  idle_timeout: soon\n"), &[]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("drowsy.yml:4:17: defaults.idle_timeout: invalid duration `soon`"),
        "{err}"
    );
    let (code, _, err) = check(&format!("{HEAD}defaults:\n  idle_timeout: 30\n"), &[]);
    assert_eq!(code, 1);
    assert!(err.contains("needs a unit"), "{err}");
}

#[test]
fn duplicate_host_names_both_routes() {
    let yaml = format!("{HEAD}routes:\n  a:\n    host: wiki.lan\n    backend: http://10.0.0.5\n  b:\n    host: WIKI.lan\n    backend: http://10.0.0.6\n");
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "drowsy.yml:8:11: routes.b.host: host `wiki.lan` is already claimed by route `a`"
        ),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("drowsy.yml:")).count(),
        1,
        "{err}"
    );
}

#[test]
fn missing_env_var_names_the_variable_but_no_value() {
    let yaml = format!("{HEAD}proxmox:\n  - url: https://pve.lan:8006\n    token_id: drowsy@pve!proxy\n    token_secret: ${{PVE_TOKEN_SECRET}}\n");
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1);
    assert!(err.starts_with("drowsy.yml:6:19: "), "{err}");
    assert!(
        err.contains("environment variable `PVE_TOKEN_SECRET` is not set"),
        "{err}"
    );
    let (code, out, err) = check(&yaml, &[("PVE_TOKEN_SECRET", "hunter2-very-secret")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("hunter2") && !err.contains("hunter2"),
        "secret printed: {out}{err}"
    );
    assert!(out.contains("token drowsy@pve!proxy"), "{out}");
}

#[test]
fn secret_files_are_read_and_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "from-a-file\n").expect("write");
    let yaml = format!("{HEAD}proxmox:\n  - url: https://pve.lan:8006\n    username: drowsy@pve\n    password_file: {}\n", secret.display());
    let (code, out, err) = check(&yaml, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("from-a-file"), "{out}");
    let yaml = format!("{HEAD}proxmox:\n  - url: https://pve.lan:8006\n    username: drowsy@pve\n    password_file: /nonexistent/pw\n");
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "drowsy.yml:6:20: proxmox[0].password_file: cannot read secret file /nonexistent/pw"
        ),
        "{err}"
    );
}

#[test]
fn route_target_rules() {
    let cases = [
        ("  a:\n    host: a.lan\n", "a route needs a target"),
        (
            "  a:\n    host: a.lan\n    backend: http://x\n    guest: 105\n",
            "either `backend` or `guest`",
        ),
        (
            "  a:\n    host: a.lan\n    guest: 105\n    port: 80\n",
            "no `proxmox` cluster is configured",
        ),
        (
            "  a:\n    host: a.lan\n    backend: ftp://x\n",
            "must start with http:// or https://",
        ),
        (
            "  a:\n    host: a.lan\n    backend: http://x\n    depends_on: [nope]\n",
            "unknown route `nope`",
        ),
        (
            "  a:\n    host: a.lan\n    backend: http://x\n    wake_with: [b]\n  bb:\n    host: b.lan\n    backend: http://y\n",
            "drowsy.yml:7:17: routes.a.wake_with[0]: unknown route `b`",
        ),
        (
            "  a:\n    host: a.lan\n    backend: http://x\n    wake_with: [a]\n",
            "routes.a.wake_with[0]: a route cannot name itself in `wake_with`",
        ),
    ];
    for (routes, expected) in cases {
        let (code, _, err) = check(&format!("{HEAD}routes:\n{routes}"), &[]);
        assert_eq!(code, 1, "{routes}");
        assert!(err.contains(expected), "{routes} => {err}");
        assert!(err.starts_with("drowsy.yml:"), "{err}");
    }
}

#[test]
fn the_example_config_is_valid() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yml"))
            .expect("example");
    let (code, out, err) = check(&example, &[("PVE_TOKEN_SECRET", "x")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("route wiki: wiki.home.arpa"), "{out}");
    assert!(
        out.contains("auto routes: guests tagged `drowsy` -> <name>.home.arpa port 80"),
        "{out}"
    );
    // Its commented `cluster:` block is valid too, once uncommented.
    let mut in_block = false;
    let with_cluster: String = example
        .lines()
        .map(|l| {
            in_block = l.starts_with("# cluster:") || (in_block && l.starts_with("#  "));
            let line = if in_block { &l[2..] } else { l };
            format!("{line}\n")
        })
        .collect();
    let (code, out, err) = check(
        &with_cluster,
        &[("PVE_TOKEN_SECRET", "x"), ("REDIS_PASSWORD", "y")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("cluster: instance proxy-a, redis://10.0.0.9:6379/0"),
        "{out}"
    );
    // And its commented `nodes:` block.
    let mut in_block = false;
    let with_nodes: String = example
        .lines()
        .map(|l| {
            in_block = l.starts_with("    # nodes:") || (in_block && l.starts_with("    #   "));
            match in_block {
                true => format!("    {}\n", &l[6..]),
                false => format!("{l}\n"),
            }
        })
        .collect();
    assert!(with_nodes.contains("\n    nodes:\n      pve2:\n        sleep_after: 30m\n"));
    let (code, _, err) = check(&with_nodes, &[("PVE_TOKEN_SECRET", "x")]);
    assert_eq!(code, 0, "{err}");
}

const PVE: &str = "proxmox:\n  - name: home\n    url: https://pve.lan:8006\n    token_id: drowsy@pve!proxy\n    token_secret: x\n";

// A guest sleeps by one idle_timeout whichever route reaches it; two routes
// naming it (here by vmid, once with its cluster) must not disagree.
#[test]
fn routes_to_one_guest_with_other_sleep_settings_are_refused_with_both_places() {
    let yaml = format!(
        "{HEAD}{PVE}routes:\n  a:\n    host: a.lan\n    guest: 110\n    port: 80\n    idle_timeout: 5m\n  b:\n    host: b.lan\n    guest: {{ vmid: 110, cluster: home }}\n    port: 8080\n    idle_timeout: 10m\n"
    );
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("drowsy.yml:16:12: routes.b.guest: names the same guest as route `a` (drowsy.yml:11:12)"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    // The same settings (or none on one route) are fine.
    let same = yaml.replace("idle_timeout: 10m", "idle_timeout: 5m");
    assert_eq!(check(&same, &[]).0, 0);
    let none = yaml.replace("    idle_timeout: 10m\n", "");
    assert_eq!(check(&none, &[]).0, 0);
}

#[test]
fn absurd_durations_and_empty_user_agents_are_refused() {
    let (code, _, err) = check(
        &format!("{HEAD}defaults:\n  idle_timeout: 100000000y\n"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.starts_with("drowsy.yml:4:17:"), "{err}");
    assert!(err.contains("never"), "{err}");
    let (code, _, err) = check(
        &format!("{HEAD}{PVE}routes:\n  a:\n    host: a.lan\n    guest: 110\n    port: 80\n    no_wake:\n      user_agents: [Uptime-Kuma, \"\"]\n"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("routes.a.no_wake.user_agents[1]: an empty user agent matches every request"),
        "{err}"
    );
}
#[test]
fn front_door_settings_are_located() {
    let cases = [
        (
            "  admin_token: short\n",
            "drowsy.yml:3:16: listen.admin_token: is 5 characters long; use at least 16",
        ),
        (
            "  admin_token: 'has spaces in it, 1234567'\n",
            "drowsy.yml:3:16: listen.admin_token: may only hold",
        ),
        (
            "  max_connections_per_ip: 0\n",
            "drowsy.yml:3:27: listen.max_connections_per_ip: must be at least 1",
        ),
        (
            "  keepalive_timeout: never\n",
            "drowsy.yml:3:22: listen.keepalive_timeout: cannot be `never`",
        ),
        (
            "  send_timeout: 0s\n",
            "drowsy.yml:3:17: listen.send_timeout: must be longer than 0",
        ),
        (
            "  body_read_timeout: soon\n",
            "drowsy.yml:3:22: listen.body_read_timeout: invalid duration `soon`",
        ),
        (
            "  max_inflight: 10\n",
            "drowsy.yml:3:3: listen: unknown key `max_inflight`",
        ),
    ];
    for (listen, expected) in cases {
        let (code, _, err) = check(&format!("{HEAD}{listen}"), &[]);
        assert_eq!(code, 1, "{listen}");
        assert!(err.starts_with(expected), "{listen} => {err}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123\n").expect("write");
    let yaml = format!(
        "{HEAD}  admin: 0.0.0.0:9090\n  admin_token_file: {}\n",
        token.display()
    );
    let (code, out, err) = check(&yaml, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("0123456789abcdef0123"), "{out}");
    assert!(!out.contains("warning"), "{out}");
    let yaml = format!("{HEAD}  admin: 0.0.0.0:9090\n");
    let (code, out, _) = check(&yaml, &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("warning: listen.admin 0.0.0.0:9090 is reachable beyond loopback without listen.admin_token"),
        "{out}"
    );
    let yaml = format!(
        "{HEAD}  admin_token: 0123456789abcdef0123\n  admin_token_file: {}\n",
        token.display()
    );
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("set either `admin_token` or `admin_token_file`, not both"),
        "{err}"
    );
}

#[test]
fn default_certificate_must_be_covered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).expect("cert");
    let (c, k) = (dir.path().join("a.pem"), dir.path().join("a.key"));
    std::fs::write(&c, cert.cert.pem()).expect("write");
    std::fs::write(&k, cert.signing_key.serialize_pem()).expect("write");
    let yaml = |name: &str| {
        format!(
            "listen:\n  https: 127.0.0.1:8443\ntls:\n  certificates:\n    - {{cert: {}, key: {}}}\n  default_certificate: {name}\n",
            c.display(),
            k.display()
        )
    };
    let (code, _, err) = check(&yaml("a.test"), &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = check(&yaml("b.test"), &[]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("drowsy.yml:6:24: tls.default_certificate: no certificate in tls.certificates is valid for `b.test`"),
        "{err}"
    );
}

#[test]
fn route_address_pins_need_a_guest() {
    let cluster = "proxmox:\n  - url: https://pve.lan:8006\n    token_id: drowsy@pve!proxy\n    token_secret: x\n";
    let cases = [
        (
            "  a:\n    host: a.lan\n    backend: http://10.0.0.5\n    address: 10.0.0.5\n",
            "drowsy.yml:11:5: routes.a.address: `address` pins a guest's address; this route has no `guest`",
        ),
        (
            "  a:\n    host: a.lan\n    guest: 105\n    port: 80\n    address: wiki.lan\n",
            "drowsy.yml:12:14: routes.a.address: `wiki.lan` is not a usable IP address",
        ),
        (
            "  a:\n    host: a.lan\n    guest: 10.0.0.5\n    port: 80\n    address: 10.0.0.6\n",
            "drowsy.yml:12:5: routes.a.address: the guest is already named by its IP address",
        ),
        (
            "  a:\n    host: a.lan\n    guest: 105\n    port: 80\n    address: 10.0.0.5\n  b:\n    host: b.lan\n    guest: 105\n    port: 81\n    address: 10.0.0.6\n",
            "drowsy.yml:17:14: routes.b.address: route `a` pins the same guest to 10.0.0.5",
        ),
    ];
    for (routes, expected) in cases {
        let (code, _, err) = check(&format!("{HEAD}{cluster}routes:\n{routes}"), &[]);
        assert_eq!(code, 1, "{routes}");
        assert!(err.starts_with(expected), "{routes} => {err}");
    }
    let ok = "  a:\n    host: a.lan\n    guest: wiki\n    port: 80\n    address: 10.0.0.5\n";
    let (code, _, err) = check(&format!("{HEAD}{cluster}routes:\n{ok}"), &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn cluster_keys_are_checked_with_their_position() {
    let (code, _, err) = check(
        &format!("{HEAD}cluster:\n  redis: http://10.0.0.9:6379\n  instance: proxy-a\n"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.starts_with("drowsy.yml:4:10: cluster.redis: `http://` is not a Redis URL scheme"),
        "{err}"
    );
    let (code, _, err) = check(
        &format!("{HEAD}cluster:\n  redis: redis://:pw@10.0.0.9/0\n  redis_password: ${{REDIS_PW}}\n  instance: bad name\n  claim_ttl: 500ms\n"),
        &[("REDIS_PW", "s3cret-value")],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "drowsy.yml:5:3: cluster.redis_password: the password is already in the redis URL"
        ),
        "{err}"
    );
    assert!(
        err.contains("drowsy.yml:6:13: cluster.instance: `bad name` is not a valid instance name"),
        "{err}"
    );
    assert!(
        err.contains("drowsy.yml:7:14: cluster.claim_ttl: must be at least 1s"),
        "{err}"
    );
    assert!(
        !err.contains("s3cret-value") && !err.contains(":pw@"),
        "a secret leaked: {err}"
    );
    let (code, _, err) = check(
        &format!("{HEAD}cluster:\n  redis: redis://10.0.0.9/x\n  ca_file: /nonexistent/ca.pem\n  instance: a\n  redis_passwrd: x\n"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("redis_password"), "a did-you-mean hint: {err}");
}

#[test]
fn a_valid_cluster_is_summarized_without_its_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("redis-pw");
    std::fs::write(&pw, "hunter2\n").expect("write");
    let (code, out, err) = check(
        &format!("{HEAD}cluster:\n  redis: rediss://drowsy@redis.lan:6380/2\n  redis_password_file: {}\n  instance: proxy-a\n", pw.display()),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("cluster: instance proxy-a, rediss://redis.lan:6380/2"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
}

// --- access (README.md, "Who can reach and wake a guest") ---

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn unknown_policy_names_are_located_with_a_hint() {
    let yaml = format!("{HEAD}access:\n  lan:\n    allow: [192.168.0.0/16]\ndefaults:\n  access: [lan, wan]\nroutes:\n  wiki:\n    host: wiki.lan\n    backend: http://10.0.0.5\n    access: [lna]\n");
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("drowsy.yml:7:17: defaults.access[1]: unknown access policy `wan`"),
        "{err}"
    );
    assert!(
        err.contains("drowsy.yml:12:14: routes.wiki.access[0]: unknown access policy `lna`"),
        "{err}"
    );
    assert!(err.contains("did you mean `lan`?"), "{err}");
}

#[test]
fn bad_cidrs_and_rates_are_located() {
    let yaml = format!("{HEAD}access:\n  lan:\n    allow: [192.168.0.0/33]\n  polite:\n    rate_limit: {{ rate: 20/fortnight }}\ndefaults:\n  wake_from: [10.0.0.0/8, lan]\nroutes:\n  wiki:\n    host: wiki.lan\n    backend: http://10.0.0.5\n    wake_rate_limit: ten\n");
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("drowsy.yml:5:13: access.lan.allow[0]: `192.168.0.0/33` is not an IP address or CIDR range"), "{err}");
    assert!(
        err.contains(
            "drowsy.yml:7:25: access.polite.rate_limit.rate: `20/fortnight` is not a rate"
        ),
        "{err}"
    );
    assert!(
        err.contains("drowsy.yml:9:27: defaults.wake_from[1]: `lan` is not an IP address"),
        "{err}"
    );
    assert!(
        err.contains("drowsy.yml:14:22: routes.wiki.wake_rate_limit: `ten` is not a rate"),
        "{err}"
    );
}

#[test]
fn htpasswd_lines_are_reported_with_their_numbers() {
    let yaml = format!(
        "{HEAD}access:\n  family:\n    basic_auth:\n      users_file: {}\n  missing:\n    basic_auth:\n      users_file: /nonexistent/htpasswd\n",
        fixture("htpasswd.bad")
    );
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1);
    let bad = fixture("htpasswd.bad");
    assert!(
        err.contains(&format!("drowsy.yml:6:19: access.family.basic_auth.users_file: {bad}:2: user `plain`: a plaintext password is not accepted")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{bad}:3: user `des`: DES crypt is not accepted")),
        "{err}"
    );
    assert!(!err.contains(":1: user `ok`"), "{err}");
    assert!(err.contains("htpasswd -nB"), "{err}");
    assert!(
        err.contains("drowsy.yml:9:19: access.missing.basic_auth.users_file: cannot read /nonexistent/htpasswd"),
        "{err}"
    );
    // The hashes themselves never show.
    assert!(!err.contains("5en6G6"), "{err}");
}

#[test]
fn forward_auth_pointing_at_a_sleeping_route_is_refused() {
    let yaml = format!("{HEAD}proxmox:\n  - url: https://pve.lan:8006\n    token_id: drowsy@pve!proxy\n    token_secret: x\naccess:\n  sso:\n    forward_auth:\n      url: http://auth.lan/api/authz/forward-auth\n  sso2:\n    forward_auth:\n      url: http://10.0.0.5:9091/api/authz/forward-auth\nroutes:\n  authelia:\n    host: auth.lan\n    guest: 110\n    port: 9091\n    idle_timeout: 15m\n  auth2:\n    guest: 10.0.0.5\n    port: 9091\n    idle_timeout: 15m\n");
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("drowsy.yml:10:12: access.sso.forward_auth.url: points at route `authelia`, which sleeps"),
        "{err}"
    );
    assert!(
        err.contains("access.sso2.forward_auth.url: points at route `auth2`, which sleeps"),
        "{err}"
    );
    assert!(
        err.contains("remove idle_timeout from route `authelia`"),
        "{err}"
    );
}

#[test]
fn a_valid_access_config_is_summarised() {
    let yaml = format!(
        "{HEAD}access:\n  lan:\n    allow: [192.168.0.0/16]\n  family:\n    basic_auth:\n      users_file: {}\n      realm: home\n  sso:\n    forward_auth:\n      url: http://user:pw@10.0.0.5:9091/api/authz/forward-auth\n      response_headers: [Remote-User]\n  polite:\n    rate_limit: {{ rate: 20/s, burst: 40 }}\ndefaults:\n  access: [lan]\n  wake_rate_limit: 10/h\nroutes:\n  wiki:\n    host: wiki.lan\n    backend: http://10.0.0.6\n    access: [polite, sso]\n    public_paths: [/outpost.goauthentik.io/]\n",
        fixture("htpasswd")
    );
    let (code, out, err) = check(&yaml, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("access family: basic_auth, 5 user(s), realm \"home\""),
        "{out}"
    );
    assert!(
        out.contains("access sso: forward_auth http://10.0.0.5:9091/api/authz/forward-auth"),
        "{out}"
    );
    assert!(!out.contains("user:pw"), "{out}");
    assert!(
        out.contains("access polite: rate_limit one per 50ms (burst 40)"),
        "{out}"
    );
    assert!(out.contains("route wiki access: [polite, sso], public /outpost.goauthentik.io/, one wake per client per 6m (burst 10)"), "{out}");
}

#[test]
fn tcp_routes_refuse_http_only_policies() {
    let yaml = format!("{HEAD}proxmox:\n  - url: https://pve.lan:8006\n    token_id: drowsy@pve!proxy\n    token_secret: x\naccess:\n  sso:\n    forward_auth:\n      url: http://10.0.0.5:9091/\ndefaults:\n  access: [sso]\nroutes:\n  mc:\n    listen: 0.0.0.0:25565\n    guest: 120\n    port: 25565\n");
    let (code, _, err) = check(&yaml, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("drowsy.yml:12:11: defaults.access: policy `sso` needs HTTP; TCP route `mc`"),
        "{err}"
    );
}

#[test]
fn tcp_wake_settings_are_located() {
    let pve = "proxmox:\n  - url: https://pve.lan:8006\n    token_id: drowsy@pve!proxy\n    token_secret: x\nroutes:\n";
    let tcp = "  mc:\n    listen: 0.0.0.0:25565\n    guest: mc\n    port: 25565\n";
    let http = "  wiki:\n    host: wiki.lan\n    guest: wiki\n    port: 80\n";
    let cases = [
        (
            format!("{http}    wake_on: data\n"),
            "drowsy.yml:12:5: routes.wiki.wake_on: `wake_on` is for TCP routes (`listen:`)",
        ),
        (
            format!("{http}    protocol: minecraft\n"),
            "routes.wiki.protocol: `protocol` is for TCP routes",
        ),
        (
            format!("{tcp}    wake_on: bytes\n"),
            "drowsy.yml:12:14: routes.mc.wake_on: unknown value `bytes`",
        ),
        (
            format!("{tcp}    protocol: bedrock\n"),
            "routes.mc.protocol: unknown value `bedrock`",
        ),
        (
            format!("{tcp}    protocol: minecraft\n    wake_on: connect\n"),
            "drowsy.yml:13:5: routes.mc.wake_on: `protocol: minecraft` wakes the guest on a login only",
        ),
        (
            format!("{tcp}    motd: hello\n"),
            "drowsy.yml:12:5: routes.mc.motd: `motd` is shown by `protocol: minecraft` only",
        ),
        (
            format!("{tcp}    protocol: minecraft\n    motd: \"{}\"\n", "z".repeat(300)),
            "drowsy.yml:13:11: routes.mc.motd: `motd` is longer than 256 characters",
        ),
        (
            format!("{tcp}    protocol: minecraft\n    motd: \"a\\tb\"\n"),
            "routes.mc.motd: `motd` holds a control character",
        ),
    ];
    for (route, want) in cases {
        let (code, _, err) = check(&format!("{HEAD}{pve}{route}"), &[]);
        assert_eq!(code, 1, "{route}");
        assert!(err.contains(want), "{route}\nwanted: {want}\ngot: {err}");
    }
    let ok = format!(
        "{tcp}    protocol: minecraft\n    motd: \"zzz\\njoin to wake it\"\n  ssh:\n    listen: 0.0.0.0:2222\n    guest: git\n    port: 22\n    wake_on: data\n"
    );
    let (code, out, err) = check(&format!("{HEAD}{pve}{ok}"), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("route mc: tcp 0.0.0.0:25565 -> guest name \"mc\" port 25565, answers Minecraft server-list pings while asleep, wakes on a login"),
        "{out}"
    );
    assert!(
        out.contains(
            "route ssh: tcp 0.0.0.0:2222 -> guest name \"git\" port 22, wakes when the client sends data"
        ),
        "{out}"
    );
}

#[test]
fn udp_route_settings_are_located() {
    let pve = "proxmox:\n  - url: https://pve.lan:8006\n    token_id: drowsy@pve!proxy\n    token_secret: x\nroutes:\n";
    let udp = "  bedrock:\n    listen: 0.0.0.0:19132/udp\n    guest: mc\n    port: 19132\n";
    let tcp = "  mc:\n    listen: 0.0.0.0:25565\n    guest: mc\n    port: 25565\n";
    let cases = [
        (
            "  bedrock:\n    listen: udp://0.0.0.0:19132\n    guest: mc\n    port: 19132\n".to_string(),
            "drowsy.yml:9:13: routes.bedrock.listen: `udp://0.0.0.0:19132`: write the protocol after the address",
        ),
        (
            "  bedrock:\n    listen: 0.0.0.0:19132/sctp\n    guest: mc\n    port: 19132\n".to_string(),
            "routes.bedrock.listen: `sctp` is not a protocol",
        ),
        (
            format!("{udp}    ready: tcp\n"),
            "drowsy.yml:12:12: routes.bedrock.ready: `tcp` is not a readiness check",
        ),
        (
            format!("{udp}    ready: tcp 70000\n"),
            "routes.bedrock.ready: `70000` is not a TCP port",
        ),
        (
            format!("{udp}    udp_queue: 0\n"),
            "drowsy.yml:12:16: routes.bedrock.udp_queue: must be at least 1",
        ),
        (
            format!("{udp}    udp_queue: 100000\n"),
            "routes.bedrock.udp_queue: must be at most 4096",
        ),
        (
            format!("{udp}    udp_session_timeout: 0s\n"),
            "routes.bedrock.udp_session_timeout: must be longer than 0s",
        ),
        (
            format!("{udp}    udp_max_sessions_per_net: 0\n"),
            "routes.bedrock.udp_max_sessions_per_net: must be at least 1",
        ),
        (
            format!("{udp}    wake_on: data\n"),
            "drowsy.yml:12:5: routes.bedrock.wake_on: `wake_on` is for TCP routes",
        ),
        (
            format!("{tcp}    udp_queue: 8\n"),
            "drowsy.yml:12:5: routes.mc.udp_queue: `udp_queue` is for UDP routes (`listen: IP:PORT/udp`)",
        ),
        (
            format!("{tcp}    ready: udp\n"),
            "routes.mc.ready: `ready` is for UDP routes",
        ),
        (
            "  bedrock:\n    listen: 0.0.0.0:19132/udp\n    host: mc.lan\n    guest: mc\n    port: 19132\n".to_string(),
            "cannot also have hosts",
        ),
    ];
    for (route, want) in cases {
        let (code, _, err) = check(&format!("{HEAD}{pve}{route}"), &[]);
        assert_eq!(code, 1, "{route}");
        assert!(err.contains(want), "{route}\nwanted: {want}\ngot: {err}");
    }
    let ok = format!(
        "{udp}    ready: tcp 25565\n    ready_delay: 2s\n    udp_session_timeout: 5m\n    udp_queue: 128\n    udp_max_sessions: 64\n    udp_max_sessions_per_net: 8\n    wake_from: [192.168.0.0/16]\n    wake_rate_limit: 6/h\n{tcp}"
    );
    let (code, out, err) = check(&format!("{HEAD}{pve}{ok}"), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("route bedrock: udp 0.0.0.0:19132 -> guest name \"mc\" port 19132/udp"),
        "{out}"
    );
}

#[test]
fn windows_and_time_zones_are_located() {
    let pve = "proxmox:\n  - url: https://pve.lan:8006\n    token_id: drowsy@pve!proxy\n    token_secret: x\nroutes:\n  tv:\n    host: tv.lan\n    guest: tv\n    port: 8096\n";
    let cases = [
        (
            "    idle_timeout: 20m\n    awake: [\"Mon-Fri 18:00-23:00\", \"Sat,Sunday 10:00-23:30\"]\n".to_string(),
            "drowsy.yml:13:36: routes.tv.awake[1]: `Sat,Sunday 10:00-23:30`: `Sunday` is not a weekday",
        ),
        (
            "    idle_timeout: 20m\n    asleep: [\"02:00-26:00\"]\n".to_string(),
            "routes.tv.asleep[0]: `02:00-26:00`: `26:00` is not a time HH:MM",
        ),
        (
            "    asleep: [\"02:00-06:00\"]\n".to_string(),
            "drowsy.yml:12:5: routes.tv.asleep: `asleep` needs a guest that sleeps",
        ),
        (
            "    idle_timeout: 20m\n    awake: [\"08:00-09:00\"]\ntimezone: Europe/Berlinn\n".to_string(),
            "drowsy.yml:14:11: timezone: `Europe/Berlinn` is not a time zone",
        ),
        (
            "    prewake: learned\n".to_string(),
            "drowsy.yml:12:5: routes.tv.prewake: `prewake` needs a guest that sleeps",
        ),
        (
            "    idle_timeout: 20m\n    prewake: always\n".to_string(),
            "drowsy.yml:13:14: routes.tv.prewake: unknown value `always`",
        ),
        (
            "    idle_timeout: 20m\n    asleep: [\"02:00-06:00\"]\n    wake_at_start: true\n".to_string(),
            "drowsy.yml:14:5: routes.tv.wake_at_start: `wake_at_start` needs `awake` windows",
        ),
    ];
    for (route, want) in cases {
        let (code, _, err) = check(&format!("{HEAD}{pve}{route}"), &[]);
        assert_eq!(code, 1, "{route}");
        assert!(err.contains(want), "{route}\nwanted: {want}\ngot: {err}");
    }
    let ok = "    idle_timeout: 20m\n    awake: [\"Mon-Fri 18:00-23:00\", \"Sat,Sun 10:00-23:30\"]\n    asleep: [\"02:00-06:00\"]\ntimezone: America/New_York\n";
    let (code, _, err) = check(&format!("{HEAD}{pve}{ok}"), &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn auto_routes_are_checked_and_summarized() {
    let pve = "proxmox:\n  - url: https://pve.lan:8006\n    token_id: drowsy@pve!proxy\n    token_secret: s\n";
    let (code, out, err) = check(
        &format!(
            "{HEAD}{pve}auto_routes:\n  domain: home.arpa\n  port: 8080\n  idle_timeout: 20m\n"
        ),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("auto routes: guests tagged `drowsy` -> <name>.home.arpa port 8080 (http; tags port-NNNN and https change them), sleeps after 20m"),
        "{out}"
    );
    let (code, _, err) = check(
        &format!("{HEAD}{pve}auto_routes:\n  domain: home.arpa\n  backend: http://10.0.0.5\n"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "drowsy.yml:9:3: auto_routes.backend: `backend` does not go in auto_routes"
        ),
        "{err}"
    );
}

#[test]
fn node_sleep_settings_are_located() {
    let pve = "proxmox:\n  - url: https://pve1.lan:8006\n    token_id: drowsy@pve!proxy\n    token_secret: x\n    nodes:\n";
    let cases = [
        (
            "      pve2:\n        sleep_after: 30m\n",
            "drowsy.yml:8:7: proxmox[0].nodes.pve2: a node that sleeps needs `wol:` to be woken again",
        ),
        (
            "      pve2:\n        wol: {mac: \"aa:bb:cc:dd:ee\"}\n",
            "drowsy.yml:9:20: proxmox[0].nodes.pve2.wol.mac: `aa:bb:cc:dd:ee` is not a MAC address",
        ),
        (
            "      pve2:\n        wol: {mac: \"01:00:5e:00:00:01\"}\n",
            "is a multicast address",
        ),
        (
            "      pve2:\n        wol: {mac: \"aa:bb:cc:dd:ee:ff\", broadcast: \"lan\"}\n",
            "proxmox[0].nodes.pve2.wol.broadcast: `lan` is not an IPv4 address",
        ),
        (
            "      pve2:\n        wol: {mac: \"aa:bb:cc:dd:ee:ff\", via: magic}\n",
            "drowsy.yml:9:46: proxmox[0].nodes.pve2.wol.via: unknown value `magic`",
        ),
        (
            "      pve2:\n        sleep_after: 0s\n        wol: {mac: \"aa:bb:cc:dd:ee:ff\"}\n",
            "proxmox[0].nodes.pve2.sleep_after: must be longer than 0s",
        ),
        (
            "      pve2:\n        watts: -3\n        wol: {mac: \"aa:bb:cc:dd:ee:ff\"}\n",
            "proxmox[0].nodes.pve2.watts: must be a number of watts",
        ),
        (
            "      pve1:\n        wol: {mac: \"aa:bb:cc:dd:ee:ff\"}\n",
            "drowsy.yml:8:7: proxmox[0].nodes.pve1: drowsy reaches the Proxmox API through `pve1`",
        ),
        (
            "      pve2:\n        wol: {mac: \"aa:bb:cc:dd:ee:ff\"}\n      pve2:\n        wol: {mac: \"aa:bb:cc:dd:ee:fe\"}\n",
            "node `pve2` is defined twice",
        ),
        (
            "      pve2:\n        wol: {mac: \"aa:bb:cc:dd:ee:ff\"}\n        awake: [\"Mon-Fri 7-19\"]\n",
            "drowsy.yml:10:17: proxmox[0].nodes.pve2.awake[0]: `Mon-Fri 7-19`: `7` is not a time HH:MM",
        ),
    ];
    for (nodes, want) in cases {
        let (code, _, err) = check(&format!("{HEAD}{pve}{nodes}"), &[]);
        assert_eq!(code, 1, "{nodes}");
        assert!(err.contains(want), "{nodes}\nwanted: {want}\ngot: {err}");
    }
    let ok = "      pve2:\n        sleep_after: 45m\n        watts: 35\n        wol: {mac: \"AA-BB-CC-DD-EE-FF\", via: direct, broadcast: 10.0.0.255}\n";
    let (code, _, err) = check(&format!("{HEAD}{pve}{ok}"), &[]);
    assert_eq!(code, 0, "{err}");
}
