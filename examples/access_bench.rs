//! What access control costs on the warm path (README.md, "Who can reach and wake a guest"): requests
//! through drowsy to one loopback backend, by routes that differ only in
//! their `access` list, measured side by side in one run and shown as a
//! ratio to the route without policies.
//!
//! `cargo run --release --example access_bench -- [ROUNDS] [REQUESTS]`
//! (`bench/access.sh`). One process: drowsy, the backend, a forward-auth
//! server and the client share the runtime, so the figures are relative.

use bytes::Bytes;
use drowsy::app::Running;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

mod support;

use support::Error;

/// Requests in flight at once per route.
const CONCURRENCY: usize = 8;

/// A server answering every request with `reply`.
async fn serve(reply: fn() -> Response<Full<Bytes>>) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(reply())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn ok() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok\n")))
}

fn authorised() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    r.headers_mut()
        .insert("remote-user", http::HeaderValue::from_static("alice"));
    r
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let [rounds, requests] = support::bench_args([5, 20_000])?;
    let requests = requests as usize;

    let backend = serve(ok).await?;
    let auth = serve(authorised).await?;
    // bcrypt cost 5, "secret" (htpasswd -nbB): checked once, then remembered.
    let user = "alice:$2y$05$guMVd8W8gNcki0.Yw8TLtefWJHlmmM2pJBKGKCdMOP50.Kovy4hNO";
    let routes = [
        ("open", ""),
        ("lan", "[lan]"),
        ("basic", "[basic]"),
        ("rate", "[rate]"),
        ("sso", "[sso]"),
    ];
    let mut yaml = format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: off\naccess:\n  lan:\n    allow: [127.0.0.0/8]\n  basic:\n    basic_auth:\n      users: [\"{user}\"]\n  rate:\n    rate_limit: {{ rate: 10000000/s }}\n  sso:\n    forward_auth:\n      url: http://{auth}/\n      response_headers: [Remote-User]\nroutes:\n"
    );
    for (name, access) in routes {
        yaml.push_str(&format!(
            "  {name}:\n    host: {name}.lan\n    backend: http://{backend}\n"
        ));
        if !access.is_empty() {
            yaml.push_str(&format!("    access: {access}\n"));
        }
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("drowsy.yml");
    std::fs::write(&path, yaml)?;
    let config = drowsy::config::load(&path).map_err(|e| e.to_string())?;
    let running = Running::start(&config).await?;
    let addr = running.http_addr().ok_or("no http entrypoint")?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();

    // Warm up every route (pools, the remembered password).
    for (name, _) in routes {
        run(&client, addr, name, 500).await?;
    }
    let mut per_route: Vec<Vec<f64>> = vec![Vec::new(); routes.len()];
    for round in 0..rounds as usize {
        // Alternate the order so no route always goes first.
        let order: Vec<usize> = match round % 2 {
            0 => (0..routes.len()).collect(),
            _ => (0..routes.len()).rev().collect(),
        };
        for i in order {
            let took = run(&client, addr, routes[i].0, requests).await?;
            per_route[i].push(took.as_secs_f64() * 1e6 / requests as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let base = median(&mut per_route[0].clone());
    println!("| route | access | µs/request (median of {rounds}) | ratio to open |");
    println!("|---|---|---|---|");
    for (i, (name, access)) in routes.iter().enumerate() {
        let m = median(&mut per_route[i]);
        let access = if access.is_empty() { "-" } else { access };
        println!("| {name} | {access} | {m:.1} | {:.3} |", m / base);
    }
    drop(running);
    Ok(())
}

/// `n` requests to `route`, `CONCURRENCY` at a time; the wall time.
async fn run(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    route: &str,
    n: usize,
) -> Result<Duration, Error> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let host = format!("{route}.lan");
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / CONCURRENCY {
                let req = Request::get(format!("http://{addr}/"))
                    .header("host", &host)
                    .header("authorization", "Basic YWxpY2U6c2VjcmV0")
                    .body(Empty::new())?;
                let resp = client.request(req).await?;
                if !resp.status().is_success() {
                    return Err(format!("{host}: {}", resp.status()).into());
                }
                resp.into_body().collect().await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed())
}
