//! The packaging files (Dockerfile, docker-compose.yml, the systemd unit)
//! agree with each other and with the docs on the config path, the binary
//! path and the ports, and the unit passes `systemd-analyze verify` where
//! that tool is installed (Debian package `systemd`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const CONFIG_PATH: &str = "/etc/drowsy/drowsy.yml";
const BINARY_PATH: &str = "/usr/local/bin/drowsy";
const ENV_FILE: &str = "/etc/drowsy/drowsy.env";
/// listen.http, listen.https, listen.admin.
const PORTS: [u16; 3] = [80, 443, 9090];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `Key=value` lines of a systemd unit, in order (a key may repeat).
fn unit_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn unit_value(entries: &[(String, String)], key: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

/// Dockerfile instructions with continuation lines joined, as
/// (INSTRUCTION, arguments); comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instr, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((instr.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

/// A JSON-array (exec form) instruction argument, e.g. `["a", "b"]`.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form: {args}: {e}"))
}

#[test]
fn unit_runs_the_binary_with_the_config_path() {
    let entries = unit_entries(&read("packaging/drowsy.service"));
    let exec = unit_value(&entries, "ExecStart");
    assert_eq!(
        exec,
        [format!("{BINARY_PATH} run --config {CONFIG_PATH}")],
        "ExecStart"
    );
    assert_eq!(
        unit_value(&entries, "ExecReload"),
        ["/bin/kill -HUP $MAINPID"]
    );
    assert_eq!(
        unit_value(&entries, "EnvironmentFile"),
        [format!("-{ENV_FILE}")]
    );
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(unit_value(&entries, key), [want], "{key}");
    }
}

#[test]
fn unit_command_line_is_accepted_by_the_binary() {
    // The same arguments plus --help: clap parses them and exits 0, so a
    // renamed subcommand or flag fails here instead of at boot.
    let entries = unit_entries(&read("packaging/drowsy.service"));
    let exec = &unit_value(&entries, "ExecStart")[0];
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some(BINARY_PATH));
    let out = Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .args(words)
        .arg("--help")
        .output()
        .expect("run drowsy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Some(tool) = find_in_path("systemd-analyze") else {
        println!("note: systemd-analyze not found (Debian package `systemd`); unit not verified");
        return;
    };
    // verify insists that ExecStart's binary exists: check a copy that points
    // at the binary cargo just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("drowsy.service");
    let text = read("packaging/drowsy.service").replace(BINARY_PATH, env!("CARGO_BIN_EXE_drowsy"));
    std::fs::write(&unit, text).expect("write unit");
    let out = Command::new(tool)
        .arg("verify")
        .arg(&unit)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and unparsable values, only warning
    // about them: any line about our unit is a failure.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("drowsy.service"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify (exit {:?}):\n{stderr}",
        out.status.code()
    );
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[test]
fn dockerfile_matches_the_unit() {
    let instrs = dockerfile_instructions(&read("Dockerfile"));
    let all = |name: &str| -> Vec<String> {
        instrs
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.clone())
            .collect()
    };
    let froms = all("FROM");
    assert!(froms.len() >= 2, "multi-stage build: {froms:?}");
    assert!(
        all("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked")),
        "the build uses the lock file"
    );
    assert!(
        all("ENV").contains(&format!("DROWSY_CONFIG={CONFIG_PATH}")),
        "ENV DROWSY_CONFIG"
    );

    let exposed: BTreeSet<u16> = all("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|p| p.trim_end_matches("/tcp").parse().expect("port"))
        .collect();
    assert_eq!(exposed, BTreeSet::from(PORTS));

    // The final stage runs as a non-root user (the last USER wins).
    let user = all("USER").pop().expect("USER in the final stage");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid != "0" && uid != "root",
        "final stage runs as root: {user}"
    );

    let entrypoint = exec_form(&all("ENTRYPOINT").pop().expect("ENTRYPOINT"));
    assert_eq!(entrypoint, [BINARY_PATH]);
    let cmd = exec_form(&all("CMD").pop().expect("CMD"));
    assert_eq!(cmd, ["run"]);
    assert!(
        all("COPY")
            .iter()
            .any(|c| c.ends_with(&format!(" {BINARY_PATH}"))),
        "the binary is copied to {BINARY_PATH}"
    );

    let health = all("HEALTHCHECK").pop().expect("HEALTHCHECK");
    let (_, command) = health.split_once("CMD ").expect("HEALTHCHECK ... CMD [..]");
    assert_eq!(exec_form(command), healthcheck_command());
}

/// What both the Dockerfile and the compose file run as the health check.
fn healthcheck_command() -> Vec<String> {
    vec![BINARY_PATH.to_string(), "health".to_string()]
}

#[test]
fn compose_file_matches_the_dockerfile() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    let svc = &doc["services"]["drowsy"];
    assert!(svc.is_mapping(), "services.drowsy");

    let volumes: Vec<&str> = svc["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .map(|v| v.as_str().expect("short volume syntax"))
        .collect();
    assert!(
        volumes
            .iter()
            .any(|v| v.ends_with(&format!(":{CONFIG_PATH}:ro"))),
        "config mounted read-only at {CONFIG_PATH}: {volumes:?}"
    );

    // "HOST:CONTAINER" or "IP:HOST:CONTAINER": the container port is last.
    let ports: BTreeSet<u16> = svc["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| {
            let s = p.as_str().expect("ports as strings");
            s.rsplit(':').next().unwrap().parse().expect("port")
        })
        .collect();
    assert_eq!(ports, BTreeSet::from(PORTS));
    // The admin endpoints are not for the network: loopback on the host.
    assert!(
        svc["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p.as_str() == Some("127.0.0.1:9090:9090")),
        "admin port published on the host's loopback only"
    );

    assert_eq!(svc["env_file"].as_str(), Some("drowsy.env"));
    assert_eq!(svc["restart"].as_str(), Some("unless-stopped"));
    let test: Vec<String> =
        serde_yaml::from_value(svc["healthcheck"]["test"].clone()).expect("healthcheck.test");
    assert_eq!(test[0], "CMD");
    assert_eq!(test[1..], healthcheck_command()[..]);
}

#[test]
fn env_file_example_is_committed_and_the_real_one_ignored() {
    let example = read("drowsy.env.example");
    assert!(
        example.lines().any(|l| l.starts_with("PVE_TOKEN_SECRET=")),
        "drowsy.env.example sets PVE_TOKEN_SECRET"
    );
    assert!(
        read(".gitignore").lines().any(|l| l.trim() == "drowsy.env"),
        ".gitignore lists drowsy.env"
    );
    let dockerignore = read(".dockerignore");
    for entry in ["target/", ".git", "drowsy.env"] {
        assert!(
            dockerignore.lines().any(|l| l.trim() == entry),
            ".dockerignore lists {entry}"
        );
    }
}

#[test]
fn docs_name_the_same_paths_and_ports() {
    let docs = read("README.md");
    for needle in [CONFIG_PATH, ENV_FILE, "systemctl reload drowsy"] {
        assert!(docs.contains(needle), "the docs mention {needle}");
    }
    for port in PORTS {
        assert!(
            docs.contains(&format!(":{port}")),
            "the docs mention port {port}"
        );
    }
}

#[test]
fn health_subcommand_used_by_the_healthcheck() {
    let out = Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .args(["health", "--help"])
        .output()
        .expect("run drowsy");
    assert!(
        out.status.success(),
        "`drowsy health` is what the container health check runs"
    );
    // Its default admin address is where the container's admin listens.
    assert!(String::from_utf8_lossy(&out.stdout).contains("http://127.0.0.1:9090"));
}

#[test]
fn acme_storage_survives_restarts_in_both_setups() {
    // The default acme.storage lies in the state directory systemd creates.
    let entries = unit_entries(&read("packaging/drowsy.service"));
    assert_eq!(unit_value(&entries, "StateDirectory"), ["drowsy"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drowsy.yml");
    std::fs::write(
        &path,
        "listen:\n  https: 127.0.0.1:8443\nacme: {challenge: tls-alpn-01}\n",
    )
    .expect("write");
    let cfg = drowsy::config::load(&path).expect("config");
    let storage = cfg.acme.expect("acme").storage;
    assert!(
        storage.starts_with("/var/lib/drowsy"),
        "{}",
        storage.display()
    );
    // Compose keeps it on a named volume.
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    let volumes = doc["services"]["drowsy"]["volumes"]
        .as_sequence()
        .expect("volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v.as_str() == Some("drowsy-state:/var/lib/drowsy")),
        "{volumes:?}"
    );
    assert!(
        doc["volumes"].get("drowsy-state").is_some(),
        "drowsy-state is declared as a named volume"
    );
}
