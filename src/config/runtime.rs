//! Typed runtime settings: the only form of the configuration the rest of
//! drowsy sees. Everything here is already validated; nothing on the request
//! path parses strings again.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A secret value (token secret, password). Its `Debug` and `Display` never
/// show the value, so it cannot leak into logs or error messages by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value, for the one place that must send it (an auth header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The file this configuration was read from (for messages and reload).
    pub source: PathBuf,
    pub listen: ListenSettings,
    pub tls: Vec<TlsCertificate>,
    /// `tls.default_certificate`: the name whose certificate answers a
    /// handshake no certificate covers (unknown or missing SNI). `None`
    /// refuses such handshakes.
    pub default_certificate: Option<String>,
    pub proxmox: Vec<ProxmoxSettings>,
    pub routes: Vec<RouteSettings>,
    /// Reload when the config file changes (in addition to SIGHUP).
    pub watch: bool,
    /// Automatic certificates (`acme:`), when configured.
    pub acme: Option<AcmeSettings>,
    /// Several instances in front of the same guests (`cluster:`).
    pub cluster: Option<ClusterSettings>,
    /// Named access policies (`access:`), in file order.
    pub access: Vec<super::PolicySettings>,
    /// Routes from Proxmox tags (`auto_routes:`), when configured.
    pub auto_routes: Option<AutoRoutes>,
    /// `state_dir:` (default `/var/lib/drowsy`).
    pub state_dir: PathBuf,
}

/// `cluster:` (README.md, "Running two instances"), validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSettings {
    /// `rediss://` (TLS) rather than `redis://`.
    pub tls: bool,
    /// Host name or IP literal (no brackets).
    pub host: String,
    pub port: u16,
    /// The database number (the URL's path).
    pub db: i64,
    /// An ACL user (the URL's user part).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Trust this CA (PEM) for `rediss://`.
    pub ca_file: Option<PathBuf>,
    /// This instance's name in the shared facts.
    pub instance: Arc<str>,
    /// How long a claim of this instance outlives it if it dies.
    pub claim_ttl: Duration,
    /// A Redis command slower than this counts as Redis being down.
    pub timeout: Duration,
}

impl ClusterSettings {
    /// The server, for humans: never with the password.
    pub fn describe(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}/{}", self.port, self.db)
    }
}

/// `auto_routes:` (README.md, "Routes from Proxmox tags"), validated: which guests get a route,
/// and what every such route starts from.
#[derive(Clone, Debug)]
pub struct AutoRoutes {
    /// The opt-in tag, lowercase.
    pub tag: String,
    /// Hosts are `<guest name>.<domain>`.
    pub domain: String,
    /// Unless the guest has a `port-NNNN` tag.
    pub port: u16,
    /// Unless the guest has an `https` tag.
    pub scheme: Scheme,
    /// Sleep, backend and `no_wake` settings of every auto route (from
    /// `auto_routes`, else `defaults`); name, hosts and target are
    /// placeholders filled in per guest.
    pub template: RouteSettings,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListenSettings {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Peers whose X-Forwarded-For is trusted and appended to.
    pub trusted_proxies: Vec<IpNet>,
    /// Connections accepted at once over all entrypoints and TCP routes;
    /// more wait in the kernel backlog.
    pub max_connections: usize,
    /// Connections one client address (an IPv6 /64) may hold at once.
    pub max_connections_per_ip: usize,
    /// Requests in flight at once (held ones included); more get 503.
    pub max_inflight_requests: usize,
    /// Time a client has to send its first bytes, and then each complete
    /// request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// Longest pause in the middle of a request body.
    pub body_read_timeout: Duration,
    /// Longest time a client may leave drowsy's writes unread.
    pub send_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub keepalive_timeout: Duration,
    /// An upgraded connection or TCP stream with no bytes either way is
    /// closed after this (`None` = never).
    pub tunnel_idle_timeout: Option<Duration>,
    pub tls_handshake_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    /// How long in-flight requests and upgraded connections may take to
    /// finish after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// Plain HTTP requests for a routed host are redirected to HTTPS
    /// (ACME HTTP-01 paths excepted).
    pub redirect_https: bool,
    /// Bearer token for the admin API.
    pub admin_token: Option<Secret>,
    /// Log the query string of each request in the access log.
    pub access_log_query: bool,
}

impl ListenSettings {
    /// The settings a running entrypoint keeps until a restart: all but
    /// the listen addresses (told apart by the caller) and the two the
    /// route table carries, `trusted_proxies` and `access_log_query`,
    /// which a reload applies. Compared whole, so a setting added later
    /// asks for a restart unless it is made reloadable here.
    pub fn needs_restart(&self, new: &ListenSettings) -> bool {
        let mut kept = new.clone();
        kept.http = self.http;
        kept.https = self.https;
        kept.admin = self.admin;
        kept.trusted_proxies.clone_from(&self.trusted_proxies);
        kept.access_log_query = self.access_log_query;
        *self != kept
    }
}

/// A certificate chain and key, read and checked when the config is loaded
/// (so `check` catches a bad file and a reload picks up renewed ones).
#[derive(Clone)]
pub struct TlsCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub certified: Arc<rustls::sign::CertifiedKey>,
}

impl fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProxmoxSettings {
    /// Cluster name, used in metrics, logs and `guest: {cluster: ..}`.
    pub name: Arc<str>,
    /// Base URL, e.g. `https://pve.lan:8006` (no `/api2/json`).
    pub url: reqwest::Url,
    pub auth: PveAuth,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    /// Accept loopback addresses that guests report (the simulated cluster
    /// runs its guests on 127.0.x.y; never set it for a real cluster).
    pub insecure_loopback_guests: bool,
    pub poll_interval: Duration,
    /// Deadline for every single API request.
    pub request_timeout: Duration,
    /// The nodes drowsy may power off, in file order.
    pub nodes: Vec<NodeSleep>,
}

/// `proxmox[].nodes.<name>` (README.md, "Sleeping whole nodes").
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSleep {
    pub node: String,
    /// How long every guest on the node must have been stopped.
    pub sleep_after: Duration,
    pub wol: Wol,
    /// How long requests are held through the node's boot.
    pub boot_timeout: Duration,
    /// The node's idle draw, for the energy estimate (0: not given).
    pub watts: f64,
    /// `awake` windows: never put to sleep inside them.
    pub schedule: Option<Arc<crate::idle::windows::Schedule>>,
}

/// How a sleeping node is woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wol {
    pub mac: [u8; 6],
    pub via: WolVia,
    /// Where drowsy's own magic packet goes (`direct`, and `api` when no
    /// other node is online to send one).
    pub broadcast: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WolVia {
    /// `POST /nodes/{node}/wakeonlan` to the API drowsy uses: that node
    /// sends the packet, to the MAC in the sleeping node's config.
    Api,
    /// drowsy sends the magic packet itself.
    Direct,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PveAuth {
    /// `token_id` is `USER@REALM!TOKENID`.
    Token { token_id: String, secret: Secret },
    /// `username` is `USER@REALM`.
    Ticket { username: String, password: Secret },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// How a route names its guest (README.md, "`routes`"; found by IP through the cluster cache).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GuestKey {
    Vmid(u32),
    /// LXC hostname / VM name; compared case-insensitively.
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for GuestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestKey::Vmid(id) => write!(f, "vmid {id}"),
            GuestKey::Name(n) => write!(f, "name {n:?}"),
            GuestKey::Ip(ip) => write!(f, "ip {ip}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GuestRef {
    pub key: GuestKey,
    /// Which cluster; `None` when only one is configured or any may match.
    pub cluster: Option<Arc<str>>,
}

/// A host pattern: exact (`wiki.home.arpa`) or wildcard (`*.home.arpa`,
/// matching exactly one or more labels in front of the suffix). Stored
/// lowercase without a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// The suffix including its leading dot: `.home.arpa`.
    Wildcard(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Target {
    /// A plain backend URL; `guest` is filled in later when its host turns
    /// out to be a known guest.
    Backend { url: BackendUrl },
    /// A Proxmox guest reached at its current IP.
    Guest {
        guest: GuestRef,
        port: u16,
        scheme: Scheme,
    },
    /// A guest that only serves as a dependency of other routes; `port`,
    /// when given, is probed to know it is ready.
    DependencyOnly { guest: GuestRef, port: Option<u16> },
}

/// A backend URL split into what the forwarder needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendUrl {
    pub scheme: Scheme,
    /// Host as written (name or IP literal, no brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix to prepend ("" when the URL has no path).
    pub path_prefix: String,
}

#[derive(Clone, Debug)]
pub struct RouteSettings {
    pub name: Arc<str>,
    pub hosts: Vec<HostPattern>,
    pub target: Target,
    /// `Some` for a TCP stream route: the address to accept on.
    pub tcp_listen: Option<SocketAddr>,
    /// What wakes a TCP route's guest (default for every other route).
    pub stream: StreamSettings,
    /// `Some` for a UDP route (`listen: IP:PORT/udp`).
    pub udp: Option<UdpSettings>,
    /// The guest's address fixed in the config: drowsy does not ask
    /// Proxmox (or the guest) for it.
    pub address: Option<IpAddr>,
    pub backend: BackendSettings,
    /// `Some` when the route's guest may be put to sleep.
    pub sleep: Option<SleepSettings>,
    pub depends_on: Vec<Arc<str>>,
    /// Routes whose guests are woken beside this one's when a request
    /// wakes it (README.md, "Linked wakes").
    pub wake_with: Vec<Arc<str>>,
    pub no_wake: NoWake,
    /// Access policies, wake rules and header rules (README.md, "Who can reach and wake a guest").
    pub access: super::RouteAccess,
    /// Made from a Proxmox tag (`auto_routes`) rather than written in the
    /// file.
    pub auto: bool,
}

impl RouteSettings {
    /// A TCP or UDP route: no hosts, no HTTP.
    pub fn is_stream(&self) -> bool {
        self.tcp_listen.is_some() || self.udp.is_some()
    }

    /// What a TCP or UDP route listens on: `tcp` or `udp`, and where.
    pub fn listen_on(&self) -> Option<(&'static str, SocketAddr)> {
        match (self.tcp_listen, &self.udp) {
            (Some(a), _) => Some(("tcp", a)),
            (None, Some(u)) => Some(("udp", u.listen)),
            (None, None) => None,
        }
    }

    /// Where the route sends its traffic, for humans (`check`, status).
    pub fn describe_target(&self) -> String {
        match &self.target {
            Target::Backend { url } => format!(
                "{}://{}:{}{}",
                url.scheme.as_str(),
                url.host,
                url.port,
                url.path_prefix
            ),
            Target::Guest { guest, port, .. } if self.udp.is_some() => {
                format!("guest {} port {port}/udp", guest.key)
            }
            Target::Guest { guest, port, .. } if self.tcp_listen.is_some() => {
                format!("guest {} port {port}", guest.key)
            }
            Target::Guest {
                guest,
                port,
                scheme,
            } => format!("guest {} port {port} ({})", guest.key, scheme.as_str()),
            Target::DependencyOnly { guest, .. } => format!("guest {} (dependency)", guest.key),
        }
    }
}

/// How a TCP route treats a connection before its guest is up (README.md,
/// "Wakes that port scanners cannot trigger").
#[derive(Clone, Debug, Default)]
pub struct StreamSettings {
    pub wake_on: WakeOn,
    pub protocol: Option<StreamProtocol>,
}

/// A UDP route (README.md, "UDP routes (game servers)").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpSettings {
    pub listen: SocketAddr,
    pub ready: UdpReady,
    /// Waited after `ready` says yes, before a woken guest gets the
    /// datagrams held for it.
    pub ready_delay: Duration,
    /// A client's session ends after this long without a datagram either
    /// way.
    pub session_timeout: Duration,
    /// Datagrams held per client while the guest wakes.
    pub queue: usize,
    pub max_sessions: usize,
    /// Sessions from one /24 (IPv4) or /64 (IPv6).
    pub max_sessions_per_net: usize,
}

/// What tells a UDP route's guest is ready: UDP has no handshake to probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpReady {
    /// The guest runs (and `ready_delay` has passed).
    Running,
    /// A TCP port of the guest answers (a game server's query port).
    Tcp(u16),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WakeOn {
    /// Any connection wakes the guest (server-first protocols need this).
    #[default]
    Connect,
    /// Only a connection whose client sends bytes does.
    Data,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamProtocol {
    /// Minecraft Java Edition: drowsy answers server-list pings while the
    /// guest sleeps; only a login wakes it.
    Minecraft { motd: Arc<str> },
}

#[derive(Clone, Debug)]
pub struct BackendSettings {
    pub connect_timeout: Duration,
    /// The backend's longest silence: not taking the next part of the
    /// request body, or not answering after the last (`None` = no limit).
    pub response_timeout: Option<Duration>,
    pub pool_idle_timeout: Duration,
    /// Largest request body accepted; larger gets 413.
    pub max_request_body: Option<u64>,
    /// Trust this CA (PEM) for an https backend instead of the public roots.
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMethod {
    Shutdown,
    Stop,
    Suspend,
    /// QEMU only: suspend to disk (`todisk=1`), RAM freed, state kept.
    Hibernate,
}

impl StopMethod {
    /// Why this method cannot put a guest of this kind to sleep: Proxmox
    /// suspends only QEMU VMs to disk. The config names a guest without its
    /// kind, so this is known only once the cluster has been read.
    pub fn unfit_for(self, kind: crate::proxmox::GuestKind) -> Option<&'static str> {
        (self == StopMethod::Hibernate && kind == crate::proxmox::GuestKind::Lxc).then_some(
            "stop_method hibernate needs a QEMU VM (a container cannot be suspended to disk): this guest is not put to sleep; use shutdown or suspend for it",
        )
    }
}

/// Rates above which a guest counts as used without any request through
/// drowsy (docs/ARCHITECTURE.md, "Backups, migrations and maintenance").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BusyWhen {
    /// Share of the guest's CPUs (0.2 = 20 %).
    pub cpu: Option<f64>,
    /// Bytes per second, in and out together.
    pub network: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadingPage {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SleepSettings {
    /// `None` means `never`: the guest is woken on demand but never put to sleep.
    pub idle_timeout: Option<Duration>,
    /// A dependency-only route without an `idle_timeout` of its own: its
    /// guest sleeps after its dependents, by their longest timeout.
    pub idle_from_dependents: bool,
    pub wake_timeout: Duration,
    pub stop_method: StopMethod,
    pub stop_timeout: Duration,
    pub loading_page: LoadingPage,
    /// Requests held during a wake at most; more get 503.
    pub max_held_requests: usize,
    /// After a failed wake, requests get the error (with this Retry-After)
    /// until this much time has passed; the next one then tries again.
    pub wake_retry_after: Duration,
    /// Off (`None`) by default.
    pub busy_when: Option<BusyWhen>,
    /// `awake`/`asleep` windows (README.md, "Awake windows and pre-wake").
    pub schedule: Option<Arc<crate::idle::windows::Schedule>>,
    /// `prewake: learned`.
    pub prewake: bool,
}

impl Default for SleepSettings {
    /// The defaults of every sleep key (README.md, "Configuration"): a
    /// guest woken on demand and never put to sleep by a timer.
    fn default() -> Self {
        SleepSettings {
            idle_timeout: None,
            idle_from_dependents: false,
            wake_timeout: Duration::from_secs(120),
            stop_method: StopMethod::Shutdown,
            stop_timeout: Duration::from_secs(60),
            loading_page: LoadingPage::Auto,
            max_held_requests: 10_000,
            wake_retry_after: Duration::from_secs(5),
            busy_when: None,
            schedule: None,
            prewake: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct NoWake {
    /// Exact paths (no query) that never wake the guest nor count as use.
    pub paths: Vec<String>,
    /// Substrings matched case-insensitively against User-Agent (stored lowercase).
    pub user_agents: Vec<String>,
}

impl Target {
    /// The guest this route names directly (backend routes learn theirs at run time).
    pub fn guest(&self) -> Option<&GuestRef> {
        match self {
            Target::Guest { guest, .. } | Target::DependencyOnly { guest, .. } => Some(guest),
            Target::Backend { .. } => None,
        }
    }
}

/// `acme:` (README.md, "Automatic HTTPS"), validated.
#[derive(Clone, Debug, PartialEq)]
pub struct AcmeSettings {
    /// Contact address given to the CA (without `mailto:`).
    pub email: Option<String>,
    /// The ACME directory URL.
    pub directory: String,
    /// Trust this CA (PEM) for the ACME server's own TLS.
    pub ca_file: Option<PathBuf>,
    /// Account, certificates and state.
    pub storage: PathBuf,
    pub challenge: ChallengeKind,
    pub eab: Option<Eab>,
    pub dns: Option<DnsSettings>,
    /// Explicit certificate groups (lowercase names, the first names the
    /// certificate); empty means one certificate per uncovered route host.
    pub certificates: Vec<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    Http01,
    TlsAlpn01,
    Dns01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Dns01 => "dns-01",
        }
    }
}

/// External account binding (RFC 8555 §7.3.4): the key id and the MAC key
/// as the CA hands it out (base64url).
#[derive(Clone, Debug, PartialEq)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: Secret,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DnsSettings {
    pub provider: DnsProvider,
    /// TTL of the TXT records written.
    pub ttl: u32,
    /// Where the TXT record must be visible before the CA is told to look.
    pub resolvers: Vec<SocketAddr>,
    pub propagation_check: bool,
    pub propagation_timeout: Duration,
    /// Waited before the first visibility check (slow secondaries).
    pub propagation_delay: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DnsProvider {
    Cloudflare {
        api_token: Secret,
        /// `https://api.cloudflare.com/client/v4` unless set.
        api_url: String,
    },
    Rfc2136 {
        server: SocketAddr,
        /// The zone to update; found with an SOA query when not given.
        zone: Option<String>,
        tsig: Option<TsigKey>,
    },
    Exec {
        /// Called as `COMMAND present|cleanup FQDN VALUE`.
        command: PathBuf,
        timeout: Duration,
    },
}

impl DnsProvider {
    pub fn name(&self) -> &'static str {
        match self {
            DnsProvider::Cloudflare { .. } => "cloudflare",
            DnsProvider::Rfc2136 { .. } => "rfc2136",
            DnsProvider::Exec { .. } => "exec",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TsigKey {
    /// The key's name as the server knows it.
    pub name: String,
    /// `hmac-sha256` and friends (RFC 8945 §6).
    pub algorithm: String,
    /// The shared secret, base64 as in BIND's `secret "..."`.
    pub secret: Secret,
}
