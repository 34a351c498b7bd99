//! The YAML schema as written by users (README.md, "Configuration"). These structs only
//! mirror the file; `validate` turns them into the typed runtime settings.
//! Every struct denies unknown keys so a typo is an error, not a silent
//! default.

use super::values::{ByteRate, ByteSize, DurationSetting, EnvString, Percent};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub proxmox: Vec<RawProxmox>,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub routes: Named<RawRoute>,
    #[serde(default)]
    pub watch: bool,
    pub acme: Option<RawAcme>,
    pub cluster: Option<RawCluster>,
    /// Named access policies (README.md, "Who can reach and wake a guest"), in file order.
    #[serde(default)]
    pub access: Named<RawPolicy>,
    pub auto_routes: Option<super::auto::RawAutoRoutes>,
    /// The zone of `awake`/`asleep` windows (default: the system's).
    pub timezone: Option<EnvString>,
    /// Where drowsy keeps what outlives a restart (the pre-wake history).
    pub state_dir: Option<EnvString>,
}

/// `cluster:` (README.md, "Running two instances"): several drowsy instances sharing use and
/// stop decisions through Redis or Valkey.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub redis: EnvString,
    pub redis_password: Option<EnvString>,
    pub redis_password_file: Option<EnvString>,
    pub instance: Option<EnvString>,
    pub ca_file: Option<EnvString>,
    pub claim_ttl: Option<DurationSetting>,
    pub timeout: Option<DurationSetting>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub http: Option<EnvString>,
    pub https: Option<EnvString>,
    pub admin: Option<EnvString>,
    #[serde(default)]
    pub trusted_proxies: Vec<EnvString>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_inflight_requests: Option<usize>,
    pub header_read_timeout: Option<DurationSetting>,
    pub body_read_timeout: Option<DurationSetting>,
    pub send_timeout: Option<DurationSetting>,
    pub keepalive_timeout: Option<DurationSetting>,
    pub tunnel_idle_timeout: Option<DurationSetting>,
    pub tls_handshake_timeout: Option<DurationSetting>,
    pub http2_max_concurrent_streams: Option<u32>,
    pub shutdown_timeout: Option<DurationSetting>,
    pub redirect_https: Option<bool>,
    pub admin_token: Option<EnvString>,
    pub admin_token_file: Option<EnvString>,
    #[serde(default)]
    pub access_log_query: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    pub default_certificate: Option<EnvString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: EnvString,
    pub key: EnvString,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxmox {
    pub name: Option<EnvString>,
    pub url: EnvString,
    pub token_id: Option<EnvString>,
    pub token_secret: Option<EnvString>,
    pub token_secret_file: Option<EnvString>,
    pub username: Option<EnvString>,
    pub password: Option<EnvString>,
    pub password_file: Option<EnvString>,
    pub ca_file: Option<EnvString>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default)]
    pub insecure_loopback_guests: bool,
    pub poll_interval: Option<DurationSetting>,
    pub request_timeout: Option<DurationSetting>,
    /// Nodes drowsy may power off (README.md, "Sleeping whole nodes").
    #[serde(default)]
    pub nodes: Named<RawNode>,
}

/// `proxmox[].nodes.<name>`: when the node sleeps and how it is woken.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub sleep_after: Option<DurationSetting>,
    pub wol: Option<RawWol>,
    pub boot_timeout: Option<DurationSetting>,
    pub watts: Option<f64>,
    pub awake: Option<Vec<EnvString>>,
}

impl Entry for RawNode {
    const WHAT: &'static str = "node";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWol {
    pub mac: EnvString,
    #[serde(default)]
    pub via: RawWolVia,
    pub broadcast: Option<EnvString>,
}

/// Who sends the magic packet: another node (`api`) or drowsy (`direct`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawWolVia {
    #[default]
    Api,
    Direct,
}

/// `acme:` (README.md, "Automatic HTTPS"): automatic certificates from an ACME CA.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub email: Option<EnvString>,
    pub directory: Option<EnvString>,
    pub ca_file: Option<EnvString>,
    pub storage: Option<EnvString>,
    pub challenge: Option<RawChallenge>,
    pub eab: Option<RawEab>,
    pub dns: Option<RawDns>,
    pub certificates: Option<Vec<Vec<EnvString>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum RawChallenge {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "dns-01")]
    Dns01,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEab {
    pub kid: EnvString,
    pub hmac_key: Option<EnvString>,
    pub hmac_key_file: Option<EnvString>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawDnsProvider {
    Cloudflare,
    Rfc2136,
    Exec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub provider: RawDnsProvider,
    // cloudflare
    pub api_token: Option<EnvString>,
    pub api_token_file: Option<EnvString>,
    pub api_url: Option<EnvString>,
    // rfc2136
    pub server: Option<EnvString>,
    pub zone: Option<EnvString>,
    pub tsig_key: Option<EnvString>,
    pub tsig_algorithm: Option<EnvString>,
    pub tsig_secret: Option<EnvString>,
    pub tsig_secret_file: Option<EnvString>,
    // exec
    pub command: Option<EnvString>,
    pub command_timeout: Option<DurationSetting>,
    // every provider
    pub ttl: Option<u32>,
    pub resolvers: Option<Vec<EnvString>>,
    pub propagation_check: Option<bool>,
    pub propagation_timeout: Option<DurationSetting>,
    pub propagation_delay: Option<DurationSetting>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawScheme {
    Http,
    Https,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawStopMethod {
    Shutdown,
    Stop,
    Suspend,
    Hibernate,
}

/// `wake_on:` of a TCP route (README.md, "Wakes that port scanners cannot
/// trigger").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawWakeOn {
    Connect,
    Data,
}

/// `prewake:` of a route (README.md, "Awake windows and pre-wake").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawPrewake {
    Off,
    Learned,
}

/// `protocol:` of a TCP route: what drowsy speaks itself while the guest
/// sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawProtocol {
    Minecraft,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawLoadingPage {
    Auto,
    Always,
    Never,
}

/// The per-route settings that `defaults:` may also set. One macro keeps the
/// two key lists identical (serde cannot combine `flatten` with
/// `deny_unknown_fields`).
macro_rules! with_route_options {
    ($(#[$meta:meta])* pub struct $name:ident { $($field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(pub $field: $ty,)*
            pub idle_timeout: Option<DurationSetting>,
            pub wake_timeout: Option<DurationSetting>,
            pub stop_method: Option<RawStopMethod>,
            pub stop_timeout: Option<DurationSetting>,
            pub loading_page: Option<RawLoadingPage>,
            pub max_held_requests: Option<usize>,
            pub wake_retry_after: Option<DurationSetting>,
            pub connect_timeout: Option<DurationSetting>,
            pub response_timeout: Option<DurationSetting>,
            pub pool_idle_timeout: Option<DurationSetting>,
            pub max_request_body: Option<ByteSize>,
            pub ca_file: Option<EnvString>,
            pub insecure_skip_verify: Option<bool>,
            pub access: Option<Vec<String>>,
            pub wake_from: Option<Vec<EnvString>>,
            pub wake_rate_limit: Option<EnvString>,
            pub response_headers: Option<HeaderRulesMap>,
            pub request_headers: Option<HeaderRulesMap>,
            pub busy_when: Option<RawBusyWhen>,
        }
    };
}

/// `busy_when: {cpu: 20%, network: 1MiB/s}`: either rate above its
/// threshold counts the guest as used.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBusyWhen {
    pub cpu: Option<Percent>,
    pub network: Option<ByteRate>,
}

with_route_options! {
    /// `defaults:`: settings applied to every route that does not set its own.
    pub struct RawDefaults {}
}

with_route_options! {
    pub struct RawRoute {
        host: Option<EnvString>,
        hosts: Option<Vec<EnvString>>,
        guest: Option<RawGuest>,
        port: Option<u16>,
        scheme: Option<RawScheme>,
        backend: Option<EnvString>,
        listen: Option<EnvString>,
        wake_on: Option<RawWakeOn>,
        protocol: Option<RawProtocol>,
        motd: Option<EnvString>,
        ready: Option<EnvString>,
        ready_delay: Option<DurationSetting>,
        udp_session_timeout: Option<DurationSetting>,
        udp_queue: Option<usize>,
        udp_max_sessions: Option<usize>,
        udp_max_sessions_per_net: Option<usize>,
        address: Option<EnvString>,
        depends_on: Option<Vec<String>>,
        wake_with: Option<Vec<String>>,
        awake: Option<Vec<EnvString>>,
        asleep: Option<Vec<EnvString>>,
        wake_at_start: Option<bool>,
        prewake: Option<RawPrewake>,
        no_wake: Option<RawNoWake>,
        public_paths: Option<Vec<String>>,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNoWake {
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub user_agents: Vec<String>,
}

/// `guest: 105`, `guest: wiki`, `guest: 10.0.0.7`, or
/// `guest: { vmid: 105, cluster: home }` (also `name:` / `ip:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawGuest {
    pub value: GuestValue,
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestValue {
    Vmid(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuestMap {
    vmid: Option<u64>,
    name: Option<EnvString>,
    ip: Option<EnvString>,
    cluster: Option<EnvString>,
}

impl<'de> Deserialize<'de> for RawGuest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawGuest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a vmid, a guest name, an IP, or a map with vmid/name/ip and cluster")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RawGuest, E> {
                Ok(RawGuest {
                    value: GuestValue::Vmid(n),
                    cluster: None,
                })
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawGuest, E> {
                let text = super::expand::expand_env(s).map_err(E::custom)?;
                Ok(RawGuest {
                    value: GuestValue::Text(text),
                    cluster: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawGuest, A::Error> {
                let m = RawGuestMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let value = match (m.vmid, m.name, m.ip) {
                    (Some(id), None, None) => GuestValue::Vmid(id),
                    (None, Some(n), None) => GuestValue::Text(n.0),
                    (None, None, Some(ip)) => GuestValue::Text(ip.0),
                    _ => {
                        return Err(de::Error::custom(
                            "a guest map needs exactly one of `vmid`, `name` or `ip`",
                        ))
                    }
                };
                Ok(RawGuest {
                    value,
                    cluster: m.cluster.map(|c| c.0),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// What one entry of a [`Named`] map is called, for its errors.
pub trait Entry {
    /// e.g. "route": "route `x` is defined twice".
    const WHAT: &'static str;
}

/// A map of named entries (`routes:`, `access:`, `nodes:`) that keeps the
/// order of the file and rejects a name used twice (YAML itself would
/// silently keep the last one).
#[derive(Debug)]
pub struct Named<T>(pub Vec<(String, T)>);

impl<T> Default for Named<T> {
    fn default() -> Self {
        Named(Vec::new())
    }
}

impl<'de, T: Deserialize<'de> + Entry> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Entry> Visitor<'de> for V<T> {
            type Value = Named<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a map of {} names to their settings", T::WHAT)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Named<T>, E> {
                Ok(Named::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Named<T>, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if out.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!(
                            "{} `{name}` is defined twice",
                            T::WHAT
                        )));
                    }
                    let entry = map.next_value::<T>()?;
                    out.push((name, entry));
                }
                Ok(Named(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl Entry for RawRoute {
    const WHAT: &'static str = "route";
}

impl Entry for RawPolicy {
    const WHAT: &'static str = "access policy";
}

/// `response_headers:` / `request_headers:`: header name → value to set,
/// or `~` (null) / `""` to remove it. File order is kept.
#[derive(Debug, Default)]
pub struct HeaderRulesMap(pub Vec<(String, Option<EnvString>)>);

impl<'de> Deserialize<'de> for HeaderRulesMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeaderRulesMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of header names to values (`~` removes the header)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderRulesMap, A::Error> {
                let mut out: Vec<(String, Option<EnvString>)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value = map.next_value::<Option<EnvString>>()?;
                    out.push((name, value));
                }
                Ok(HeaderRulesMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// One named policy: one kind of check (`allow`/`deny` go together).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub allow: Option<Vec<EnvString>>,
    pub deny: Option<Vec<EnvString>>,
    pub basic_auth: Option<RawBasicAuth>,
    pub forward_auth: Option<RawForwardAuth>,
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    pub users_file: Option<EnvString>,
    /// htpasswd lines, `name:hash`.
    pub users: Option<Vec<EnvString>>,
    pub realm: Option<EnvString>,
    #[serde(default)]
    pub forward_credentials: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwardAuth {
    pub url: EnvString,
    #[serde(default)]
    pub response_headers: Vec<String>,
    pub request_headers: Option<Vec<String>>,
    pub timeout: Option<DurationSetting>,
    #[serde(default)]
    pub add_auth_cookies_to_response: Vec<String>,
    pub ca_file: Option<EnvString>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub rate: EnvString,
    pub burst: Option<u32>,
}
