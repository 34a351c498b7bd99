//! The command line (README.md, "Commands").

use crate::app::Running;
use crate::config::{self, Config, PveAuth, StreamProtocol, Target, WakeOn};
use crate::logging::{self, LogFormat};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[path = "completions.rs"]
pub mod completions;

#[derive(Parser, Debug)]
#[command(
    name = "drowsy",
    version,
    about = "A reverse proxy for Proxmox VE homelabs that puts idle guests to sleep and wakes them on the next request"
)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(long, short = 'c', env = "DROWSY_CONFIG", default_value = "drowsy.yml")]
    pub config: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy (the default command).
    Run(ConfigArg),
    /// Validate the configuration, print a summary, and exit.
    Check(ConfigArg),
    /// Run the simulated Proxmox VE API alone (for trying drowsy without a cluster).
    Sim(SimArgs),
    /// A simulated cluster with drowsy in front of it: nothing to set up.
    Demo(DemoArgs),
    /// Print a table of the routes of a running drowsy.
    Status(AdminArg),
    /// Exit 0 when a running drowsy answers /healthz (for container health checks).
    Health(AdminArg),
    /// Print the certificates of a running drowsy: names, issuer, expiry, next renewal, last error.
    Certs(AdminArg),
    /// Wake a route's guest through the admin API and wait until it answers.
    Wake(RouteArg),
    /// Put a route's guest to sleep now (refused while it is in use).
    Sleep(RouteArg),
    /// Like `docker stats`: CPU, memory, network and disk I/O of every guest, refreshed each poll.
    Stats(StatsArgs),
    /// The journal of a route's guest (LXC through the node's terminal, QEMU through its guest agent).
    Logs(LogsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff), or write every page into a directory.
    Manpage(completions::ManpageArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct RouteArg {
    /// The route's name in the config.
    pub route: String,
    #[command(flatten)]
    pub admin: AdminArg,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LogsArgs {
    /// The route whose guest's journal to show.
    pub route: String,
    /// Keep printing new lines.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(short = 'n', long = "lines", value_name = "N")]
    pub lines: Option<u32>,
    /// Only this systemd unit.
    #[arg(short = 'u', long, value_name = "UNIT")]
    pub unit: Option<String>,
    #[command(flatten)]
    pub admin: AdminArg,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StatsArgs {
    /// Only the guest of this route.
    pub route: Option<String>,
    /// Print one table and exit.
    #[arg(long)]
    pub no_stream: bool,
    #[command(flatten)]
    pub admin: AdminArg,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Address of the demo proxy.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Address of the demo's admin endpoints.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: std::net::SocketAddr,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AdminArg {
    /// Base URL of drowsy's admin listener.
    #[arg(long, env = "DROWSY_ADMIN", default_value = "http://127.0.0.1:9090")]
    pub admin: String,
    /// The admin API's bearer token (listen.admin_token); read from the
    /// environment only, so it never shows in the process list.
    #[arg(skip = std::env::var(crate::status::TOKEN_ENV).ok().filter(|t| !t.is_empty()))]
    pub token: Option<String>,
}

impl AdminArg {
    fn client(&self) -> crate::status::Admin<'_> {
        crate::status::Admin {
            url: &self.admin,
            token: self.token.as_deref(),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address of the simulated API.
    #[arg(long, default_value = "127.0.0.1:8006")]
    pub listen: std::net::SocketAddr,
    /// YAML file describing the nodes and guests (a small default set without it).
    #[arg(long)]
    pub guests: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long)]
    pub plain_http: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run(cli.config));
    if !matches!(
        command,
        Command::Check(_)
            | Command::Status(_)
            | Command::Health(_)
            | Command::Certs(_)
            | Command::Wake(_)
            | Command::Sleep(_)
            | Command::Stats(_)
            | Command::Logs(_)
            | Command::Completions(_)
            | Command::Manpage(_)
    ) {
        if let Err(e) = logging::init(cli.log_format, cli.log_level.as_deref()) {
            eprintln!("drowsy: {e}");
            return ExitCode::FAILURE;
        }
    }
    match command {
        Command::Check(arg) => check(&arg.config),
        Command::Sim(args) => sim(args),
        Command::Demo(args) => demo(args),
        Command::Status(arg) => block_on(crate::status::status(&arg.client())),
        Command::Certs(arg) => block_on(crate::status::certs(&arg.client())),
        Command::Health(arg) => block_on(crate::status::health(&arg.client())),
        Command::Wake(r) => block_on(crate::status::control(&r.admin.client(), &r.route, "wake")),
        Command::Sleep(r) => block_on(crate::status::control(&r.admin.client(), &r.route, "sleep")),
        Command::Logs(args) => block_on(crate::logs::logs(
            &args.admin.client(),
            &args.route,
            args.lines,
            args.unit.as_deref(),
            args.follow,
        )),
        Command::Stats(args) => block_on(crate::stats::stats(
            &args.admin.client(),
            args.route.as_deref(),
            !args.no_stream,
        )),
        Command::Completions(args) => completions::completions(&args),
        Command::Manpage(args) => completions::manpage(&args),
        Command::Run(arg) => run(&arg.config),
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            print!("{}", summary(&cfg));
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

/// A short description of what a config does; never prints secrets.
pub fn summary(cfg: &Config) -> String {
    let mut out = String::new();
    let addr = |a: Option<std::net::SocketAddr>| a.map_or("-".to_string(), |a| a.to_string());
    out.push_str(&format!(
        "listen: http {}  https {}  admin {}\n",
        addr(cfg.listen.http),
        addr(cfg.listen.https),
        addr(cfg.listen.admin)
    ));
    for c in &cfg.tls {
        out.push_str(&format!(
            "tls: {} ({})\n",
            c.cert.display(),
            c.key.display()
        ));
    }
    for p in &cfg.proxmox {
        let auth = match &p.auth {
            PveAuth::Token { token_id, .. } => format!("token {token_id}"),
            PveAuth::Ticket { username, .. } => format!("ticket as {username}"),
        };
        out.push_str(&format!(
            "proxmox {}: {} ({auth}, poll every {})\n",
            p.name,
            p.url,
            humantime::format_duration(p.poll_interval)
        ));
    }
    for r in &cfg.routes {
        let hosts: Vec<String> = r.hosts.iter().map(|h| h.to_string()).collect();
        let target = r.describe_target();
        let entry = match (r.listen_on(), hosts.is_empty()) {
            (Some((proto, addr)), _) => format!("{proto} {addr}"),
            (None, true) => "-".to_string(),
            (None, false) => hosts.join(", "),
        };
        let sleep = match (&r.sleep, &r.target) {
            (Some(_), Target::Backend { .. }) => {
                ", sleeps like a guest route if its host is a guest".to_string()
            }
            (Some(s), _) => match s.idle_timeout {
                Some(t) => format!(", sleeps after {}", humantime::format_duration(t)),
                None => ", never sleeps".to_string(),
            },
            (None, _) => String::new(),
        };
        let wakes = match (&r.stream.protocol, r.stream.wake_on) {
            (Some(StreamProtocol::Minecraft { .. }), _) => {
                ", answers Minecraft server-list pings while asleep, wakes on a login"
            }
            (None, WakeOn::Data) => ", wakes when the client sends data",
            (None, WakeOn::Connect) => "",
        };
        out.push_str(&format!(
            "route {}: {entry} -> {target}{sleep}{wakes}\n",
            r.name
        ));
    }
    if let Some(c) = &cfg.cluster {
        out.push_str(&format!(
            "cluster: instance {}, {} (claims outlive a dead instance by {})\n",
            c.instance,
            c.describe(),
            humantime::format_duration(c.claim_ttl)
        ));
    }
    if let Some(a) = &cfg.auto_routes {
        let sleep = match a.template.sleep.as_ref().map(|s| s.idle_timeout) {
            Some(Some(t)) => format!(", sleeps after {}", humantime::format_duration(t)),
            Some(None) => ", never sleeps".to_string(),
            None => String::new(),
        };
        out.push_str(&format!(
            "auto routes: guests tagged `{}` -> <name>.{} port {} ({}; tags port-NNNN and https change them){sleep}\n",
            a.tag,
            a.domain,
            a.port,
            a.scheme.as_str()
        ));
    }
    out.push_str(&crate::acme::names::summary(cfg));
    out.push_str(&crate::access::summary(cfg));
    for w in warnings(cfg) {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

/// Settings that work but weaken the front door (README.md, "Exposing drowsy to the internet").
fn warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(admin) = cfg.listen.admin {
        if !admin.ip().is_loopback() && cfg.listen.admin_token.is_none() {
            out.push(format!(
                "listen.admin {admin} is reachable beyond loopback without listen.admin_token: wake and sleep calls are refused until one is set"
            ));
        }
    }
    for p in cfg.proxmox.iter().filter(|p| p.insecure_loopback_guests) {
        out.push(format!(
            "proxmox {}: insecure_loopback_guests trusts loopback addresses reported by guests (for the simulated cluster only)",
            p.name
        ));
    }
    out
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("drowsy: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn block_on(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("drowsy: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(args: DemoArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let demo = match crate::demo::Demo::start(args.listen, args.admin).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("drowsy demo: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("{}", crate::demo::instructions(&demo));
        wait_for_stop_signal().await;
        demo.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn sim(args: SimArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(crate::sim::run_cli(
        args.listen,
        args.guests,
        args.plain_http,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drowsy sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    match runtime() {
        Ok(rt) => rt.block_on(serve(cfg)),
        Err(code) => code,
    }
}

async fn serve(cfg: Config) -> ExitCode {
    let running = match Running::start(&cfg).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        http = ?running.http_addr(),
        https = ?running.https_addr(),
        admin = ?running.admin_addr,
        routes = cfg.routes.len(),
        "drowsy is serving"
    );
    if cfg.watch {
        running.watch_file();
    }
    reload_on_sighup(running.clone());
    wait_for_stop_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    ExitCode::SUCCESS
}

/// SIGHUP reloads the config file (README.md, "Commands").
fn reload_on_sighup(running: std::sync::Arc<Running>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; reload needs a restart");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = running.reload_from_file().await;
        }
    });
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
