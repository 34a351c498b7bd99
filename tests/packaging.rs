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
    let entries = unit_entries(&read("packaging/drowsy.service"));
    assert_binary_accepts(&unit_value(&entries, "ExecStart")[0], BINARY_PATH);
}

/// A unit's ExecStart plus --help: clap parses it and exits 0, so a renamed
/// subcommand or flag fails here instead of at boot.
fn assert_binary_accepts(exec: &str, binary: &str) {
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some(binary));
    assert_success(
        Command::new(env!("CARGO_BIN_EXE_drowsy"))
            .args(words)
            .arg("--help"),
        exec,
    );
}

fn assert_success(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    systemd_verify(None);
}

/// `systemd-analyze verify` on the unit, with the Debian package's drop-in
/// beside it when given (systemd reads drowsy.service.d/ next to the file).
/// Skipped where the tool is not installed (Debian package `systemd`).
fn systemd_verify(drop_in: Option<&str>) {
    let Some(tool) = find_in_path("systemd-analyze") else {
        println!("note: systemd-analyze not found (Debian package `systemd`); unit not verified");
        return;
    };
    // verify insists that ExecStart's binary exists: check copies that point
    // at the binary cargo just built.
    let bin = env!("CARGO_BIN_EXE_drowsy");
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("drowsy.service");
    let text = read("packaging/drowsy.service").replace(BINARY_PATH, bin);
    std::fs::write(&unit, text).expect("write unit");
    if let Some(drop_in) = drop_in {
        let drop_ins = dir.path().join("drowsy.service.d");
        std::fs::create_dir(&drop_ins).expect("mkdir");
        let text = read(drop_in).replace(DEB_BINARY_PATH, bin);
        std::fs::write(drop_ins.join("package.conf"), text).expect("write drop-in");
    }
    let out = Command::new(tool)
        .arg("verify")
        .arg(&unit)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and unparsable values, only warning
    // about them: any line about our files is a failure.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("drowsy.service") || l.contains("package.conf"))
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
    // The base images are build arguments (scripts/image-check.sh builds
    // with local ones), with the published images as defaults.
    assert_eq!(froms, ["${BUILD_IMAGE} AS build", "${RUN_IMAGE}"]);
    let args = all("ARG");
    for want in [
        "BUILD_IMAGE=rust:1-bookworm",
        "RUN_IMAGE=gcr.io/distroless/cc-debian12:nonroot",
    ] {
        assert!(args.iter().any(|a| a == want), "ARG {want}: {args:?}");
    }
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

// ---- The Debian package ([package.metadata.deb] in Cargo.toml) -------------

/// The package's binary, and the user its unit runs as (postinst makes it).
const DEB_BINARY_PATH: &str = "/usr/bin/drowsy";
const DEB_USER: &str = "drowsy";
const DEB_DROP_IN: &str = "packaging/debian/drowsy.service.d/package.conf";

/// The `assets = [...]` entries of `[package.metadata.deb]`, as
/// (source, destination, mode). Each entry is written on a line of its own
/// as a JSON-compatible array, which keeps this parser small.
fn deb_assets() -> Vec<(String, String, String)> {
    let manifest = read("Cargo.toml");
    let (_, deb) = manifest
        .split_once("\n[package.metadata.deb]\n")
        .expect("[package.metadata.deb] in Cargo.toml");
    let (_, list) = deb.split_once("\nassets = [\n").expect("assets = [");
    let (list, _) = list.split_once("\n]").expect("assets list ends with ]");
    list.lines()
        .map(|l| l.trim().trim_end_matches(','))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let v: Vec<String> =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("asset line {l}: {e}"));
            assert_eq!(v.len(), 3, "asset {l}: [source, destination, mode]");
            (v[0].clone(), v[1].clone(), v[2].clone())
        })
        .collect()
}

fn deb_asset(dest: &str) -> (String, String) {
    deb_assets()
        .into_iter()
        .find(|(_, d, _)| d == dest)
        .map(|(s, _, m)| (s, m))
        .unwrap_or_else(|| panic!("no asset installed at {dest}"))
}

#[test]
fn deb_assets_exist_and_land_where_debian_looks() {
    let assets = deb_assets();
    for (src, dest, mode) in &assets {
        assert!(
            !dest.starts_with('/'),
            "{dest}: cargo deb wants relative paths"
        );
        assert!(
            u32::from_str_radix(mode, 8).is_ok_and(|m| m & 0o002 == 0),
            "{src}: mode {mode}"
        );
        if src.starts_with("target/release/") {
            continue; // built by cargo deb
        }
        match src.strip_suffix("*.1") {
            Some(dir) => assert!(
                std::fs::read_dir(repo().join(dir)).expect(dir).any(|e| e
                    .expect("entry")
                    .path()
                    .extension()
                    == Some("1".as_ref())),
                "no man pages in {dir}"
            ),
            None => assert!(repo().join(src).is_file(), "asset {src} is missing"),
        }
    }
    assert_eq!(
        deb_asset("usr/bin/"),
        ("target/release/drowsy".into(), "755".into())
    );
    // The conffile is the documented example, readable by the package only
    // through postinst's statoverride (root:drowsy 0640); the secrets file is
    // read by systemd as root.
    assert_eq!(
        deb_asset(CONFIG_PATH.trim_start_matches('/')),
        ("config.example.yml".into(), "644".into())
    );
    assert_eq!(
        deb_asset(ENV_FILE.trim_start_matches('/')),
        ("drowsy.env.example".into(), "600".into())
    );
    let postinst = read("packaging/debian/postinst");
    assert!(
        postinst.contains(&format!("--add root {DEB_USER} 0640 {CONFIG_PATH}")),
        "postinst lets the service's group read the config"
    );
    assert_eq!(
        deb_asset("usr/lib/systemd/system/drowsy.service.d/package.conf").0,
        DEB_DROP_IN
    );
    for (src, dest) in [
        (
            "packaging/completions/drowsy.bash",
            "usr/share/bash-completion/completions/drowsy",
        ),
        (
            "packaging/completions/_drowsy",
            "usr/share/zsh/vendor-completions/_drowsy",
        ),
        (
            "packaging/completions/drowsy.fish",
            "usr/share/fish/vendor_completions.d/drowsy.fish",
        ),
        ("packaging/man/*.1", "usr/share/man/man1/"),
    ] {
        assert_eq!(deb_asset(dest).0, src);
    }
    // The unit itself comes from systemd-units (unit-scripts = packaging/).
    assert!(read("Cargo.toml").contains(
        "systemd-units = { unit-scripts = \"packaging/\", enable = true, start = false }"
    ));
}

#[test]
fn deb_drop_in_runs_the_package_binary_as_the_system_user() {
    let entries = unit_entries(&read(DEB_DROP_IN));
    // An empty ExecStart= first clears the unit's own.
    assert_eq!(
        unit_value(&entries, "ExecStart"),
        [
            "".to_string(),
            format!("{DEB_BINARY_PATH} run --config {CONFIG_PATH}")
        ]
    );
    for (key, want) in [
        ("DynamicUser", "no"),
        ("User", DEB_USER),
        ("Group", DEB_USER),
    ] {
        assert_eq!(unit_value(&entries, key), [want], "{key}");
    }
    // The directory postinst makes is the unit's StateDirectory, and purge
    // removes it.
    let unit = unit_entries(&read("packaging/drowsy.service"));
    let state = format!("/var/lib/{}", unit_value(&unit, "StateDirectory")[0]);
    let postinst = read("packaging/debian/postinst");
    assert!(postinst.contains(&format!(
        "install -d -o {DEB_USER} -g {DEB_USER} -m 0700 {state}"
    )));
    assert!(postinst.contains(&format!("adduser --system --group --home {state}")));
    assert!(read("packaging/debian/postrm").contains(&format!("rm -rf {state}\n")));
}

#[test]
fn deb_maintainer_scripts_are_sh_with_one_debhelper_token() {
    for script in ["packaging/debian/postinst", "packaging/debian/postrm"] {
        let text = read(script);
        assert!(text.starts_with("#!/bin/sh\n"), "{script}");
        // cargo deb puts its systemd part at the token: exactly one, on a line
        // of its own (one in a comment was replaced too, breaking the script).
        let tokens: Vec<&str> = text.lines().filter(|l| l.contains("#DEBHELPER#")).collect();
        assert_eq!(tokens, ["#DEBHELPER#"], "{script}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(repo().join(script))
            .expect(script)
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is executable");
        assert_success(
            Command::new("sh").arg("-n").arg(repo().join(script)),
            script,
        );
    }
}

#[test]
fn deb_drop_in_command_line_is_accepted_by_the_binary() {
    let entries = unit_entries(&read(DEB_DROP_IN));
    let exec = unit_value(&entries, "ExecStart").pop().expect("ExecStart");
    assert_binary_accepts(&exec, DEB_BINARY_PATH);
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_with_the_package_drop_in() {
    systemd_verify(Some(DEB_DROP_IN));
}

// ---- Completions and man pages ---------------------------------------------

/// The package ships copies made by `drowsy completions` and `drowsy
/// manpage`, so `cargo deb` needs no build step of its own; they must match
/// what the command line says now.
#[test]
fn shipped_completions_and_man_pages_are_current() {
    let stale =
        "stale: run packaging/regenerate.sh and commit packaging/completions and packaging/man";
    use drowsy::cli::completions::{completion_script, man_pages, Shell};
    for (shell, file) in [
        (Shell::Bash, "drowsy.bash"),
        (Shell::Zsh, "_drowsy"),
        (Shell::Fish, "drowsy.fish"),
    ] {
        let path = format!("packaging/completions/{file}");
        let shipped = std::fs::read(repo().join(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(shipped == completion_script(shell), "{path} is {stale}");
    }
    let pages = man_pages().expect("man pages");
    let mut shipped: Vec<String> = std::fs::read_dir(repo().join("packaging/man"))
        .expect("packaging/man")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    let mut made: Vec<String> = pages.iter().map(|(n, _)| n.clone()).collect();
    made.sort();
    assert_eq!(shipped, made, "packaging/man is {stale}");
    for (name, text) in &pages {
        let path = format!("packaging/man/{name}");
        assert!(
            std::fs::read(repo().join(&path)).expect(&path) == *text,
            "{path} is {stale}"
        );
    }
    // One page per subcommand, and the main page names the files the
    // package installs.
    assert!(made.contains(&"drowsy-check.1".to_string()));
    let main = String::from_utf8_lossy(&pages[0].1).into_owned();
    assert!(
        main.starts_with(".ie") && main.contains(".TH drowsy 1"),
        "{main}"
    );
    for needle in [CONFIG_PATH, ENV_FILE, "/var/lib/drowsy"] {
        assert!(main.contains(needle), "drowsy.1 names {needle}");
    }
}

#[test]
fn completions_command_prints_a_script_for_each_shell() {
    for (shell, needle) in [
        ("bash", "complete -F _drowsy"),
        ("zsh", "#compdef drowsy"),
        ("fish", "complete -c drowsy"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_drowsy"))
            .args(["completions", shell])
            .output()
            .expect("run drowsy");
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(needle), "{shell}: {needle}");
        // Subcommands and their flags are completed.
        assert!(text.contains("check") && text.contains("config"), "{shell}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .args(["completions", "tcsh"])
        .output()
        .expect("run drowsy");
    assert!(!out.status.success(), "an unknown shell is refused");
    let out = Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .arg("manpage")
        .output()
        .expect("run drowsy");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(".SH SUBCOMMANDS"));
}
