//! `drowsy check` on the `acme` section: each mistake at its
//! `file:line:col`, with a hint; secrets never printed.

use std::process::Command;

fn check(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drowsy.yml");
    let yaml = yaml.replace("$DIR", &dir.path().display().to_string());
    std::fs::write(&path, yaml).expect("write");
    std::fs::write(
        dir.path().join("hmac.key"),
        "c2VjcmV0LWhtYWMta2V5LXZhbHVl\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run drowsy");
    let clean = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .replace(&path.display().to_string(), "drowsy.yml")
            .replace(&dir.path().display().to_string(), "$DIR")
    };
    (
        out.status.code().unwrap_or(-1),
        clean(&out.stdout),
        clean(&out.stderr),
    )
}

const HEAD: &str = "listen:\n  http: 127.0.0.1:8080\n  https: 127.0.0.1:8443\nroutes:\n  w:\n    hosts: [wiki.example.com, '*.apps.example.com', 10.0.0.9]\n    backend: http://10.0.0.5\n";

#[test]
fn unknown_dns_provider_is_located_with_the_choices() {
    let (code, _, err) = check(&format!(
        "{HEAD}acme:\n  challenge: dns-01\n  dns:\n    provider: route53\n"
    ));
    assert_eq!(code, 1);
    assert!(
        err.starts_with("drowsy.yml:11:15: acme.dns.provider: unknown value `route53`"),
        "{err}"
    );
    assert!(
        err.contains("expected one of: cloudflare, rfc2136, exec"),
        "{err}"
    );
}

#[test]
fn a_wildcard_needs_dns01() {
    let (code, _, err) = check(&format!(
        "{HEAD}acme:\n  certificates:\n    - ['*.apps.example.com', apps.example.com]\n"
    ));
    assert_eq!(code, 1);
    assert!(
        err.starts_with("drowsy.yml:10:8: acme.certificates[0][0]: wildcard `*.apps.example.com` needs challenge: dns-01"),
        "{err}"
    );
    assert!(
        err.contains("hint: CAs validate wildcard names only through DNS"),
        "{err}"
    );
}

#[test]
fn a_missing_token_file_is_named() {
    let (code, _, err) = check(&format!(
        "{HEAD}acme:\n  challenge: dns-01\n  dns:\n    provider: cloudflare\n    api_token_file: /nonexistent/cf-token\n"
    ));
    assert_eq!(code, 1);
    assert!(
        err.starts_with("drowsy.yml:12:21: acme.dns.api_token_file: cannot read secret file /nonexistent/cf-token"),
        "{err}"
    );
}

#[test]
fn provider_specific_mistakes() {
    let (code, _, err) = check(&format!(
        "{HEAD}acme:\n  challenge: dns-01\n  dns:\n    provider: exec\n    command: /nonexistent/hook\n    api_token: x\n"
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains("drowsy.yml:12:14: acme.dns.command: cannot use /nonexistent/hook"),
        "{err}"
    );
    assert!(err.contains("drowsy.yml:13:5: acme.dns.api_token: `api_token` belongs to provider cloudflare, not exec"), "{err}");
    let (code, _, err) = check(&format!(
        "{HEAD}acme:\n  challenge: dns-01\n  dns:\n    provider: rfc2136\n    server: ns1\n    tsig_key: k\n    tsig_algorithm: hmac-md5\n    tsig_secret: 'not base64!'\n"
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains("acme.dns.server: `ns1` is not an IP or IP:PORT"),
        "{err}"
    );
    assert!(
        err.contains("acme.dns.tsig_algorithm: unknown TSIG algorithm `hmac-md5`"),
        "{err}"
    );
    assert!(
        err.contains("acme.dns.tsig_secret: the TSIG secret is not base64"),
        "{err}"
    );
    assert!(
        !err.contains("not base64!"),
        "the secret itself is not shown: {err}"
    );
}

#[test]
fn listeners_the_challenges_need() {
    let (code, _, err) = check("listen:\n  http: 127.0.0.1:8080\nacme:\n  email: a@example.com\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("drowsy.yml:3:1: acme: automatic certificates need an HTTPS entrypoint"),
        "{err}"
    );
    let (code, _, err) = check("listen:\n  https: 127.0.0.1:8443\nacme:\n  challenge: http-01\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("drowsy.yml:4:14: acme.challenge: http-01 is answered on listen.http"),
        "{err}"
    );
    let (code, _, err) = check("listen:\n  http: 127.0.0.1:8080\n  redirect_https: true\n");
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "drowsy.yml:3:19: listen.redirect_https: redirecting to HTTPS needs listen.https"
        ),
        "{err}"
    );
    let (code, _, err) = check(&format!("{HEAD}acme:\n  directory: http://ca.lan/dir\n"));
    assert_eq!(code, 1);
    assert!(
        err.contains("acme.directory: `http://ca.lan/dir` is not an https:// URL"),
        "{err}"
    );
}

#[test]
fn the_summary_lists_what_will_be_ordered_and_hides_the_eab_key() {
    let (code, out, err) = check(&format!(
        "{HEAD}  l:\n    host: app.localhost\n    backend: http://10.0.0.6\nacme:\n  directory: letsencrypt-staging\n  storage: $DIR/acme\n  eab: {{kid: kid-1, hmac_key_file: $DIR/hmac.key}}\n"
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("acme: https://acme-staging-v02.api.letsencrypt.org/directory (http-01), storage $DIR/acme"),
        "{out}"
    );
    assert!(
        out.contains("acme certificate: wiki.example.com\n"),
        "{out}"
    );
    assert!(
        out.contains("acme skips *.apps.example.com: wildcard hosts need"),
        "{out}"
    );
    assert!(
        out.contains("acme skips 10.0.0.9: it is an IP address"),
        "{out}"
    );
    assert!(out.contains("acme skips app.localhost"), "{out}");
    assert!(!out.contains("c2VjcmV0"), "{out}");
}

/// config.example.yml shows the `acme` section commented out; uncommented
/// (one `# ` level) it is valid as written.
#[test]
fn the_example_acme_section_is_valid_when_uncommented() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yml"))
            .expect("example");
    let mut out = Vec::new();
    let mut in_acme = false;
    for line in example.lines() {
        if line == "# acme:" {
            in_acme = true;
        } else if in_acme && !line.starts_with("#  ") {
            in_acme = false;
        }
        let uncomment =
            in_acme || line.starts_with("  # https:") || line.starts_with("  # redirect_https:");
        out.push(match uncomment {
            true => line.replacen("# ", "", 1),
            false => line.to_string(),
        });
    }
    let yaml = out
        .join("\n")
        .replace("/run/secrets/cloudflare", "$DIR/hmac.key");
    assert!(yaml.contains("\nacme:\n  email:"), "{yaml}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drowsy.yml");
    std::fs::write(dir.path().join("hmac.key"), "token\n").expect("write");
    std::fs::write(
        &path,
        yaml.replace("$DIR", &dir.path().display().to_string()),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_drowsy"))
        .args(["check", "--config"])
        .arg(&path)
        .env("PVE_TOKEN_SECRET", "x")
        .output()
        .expect("run drowsy");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("acme: https://acme-v02.api.letsencrypt.org/directory (http-01), storage /var/lib/drowsy/acme"),
        "{stdout}"
    );
    assert!(
        stdout.contains("acme certificate: wiki.home.arpa"),
        "{stdout}"
    );
}
