//! The Proxmox calls of node power (pve-manager `PVE/API2/Nodes.pm`).

use super::safety::{self, ClusterView};
use crate::proxmox::{percent_encode, PveClient, PveError};
use std::collections::HashMap;

pub async fn cluster(client: &PveClient) -> Result<ClusterView, PveError> {
    let data = client.get("/cluster/status", "/cluster/status").await?;
    Ok(ClusterView::parse(&data))
}

/// Votes per node; every node has one when the list cannot be read (the
/// token may lack `Sys.Audit` on `/`, or the node is standalone).
pub async fn votes(client: &PveClient) -> HashMap<String, u64> {
    match client
        .get("/cluster/config/nodes", "/cluster/config/nodes")
        .await
    {
        Ok(data) => safety::parse_votes(&data),
        Err(_) => HashMap::new(),
    }
}

pub async fn active_tasks(client: &PveClient, node: &str) -> Result<Vec<String>, PveError> {
    let path = format!("/nodes/{}/tasks?source=active", percent_encode(node));
    let data = client.get(&path, "/nodes/{node}/tasks").await?;
    Ok(safety::active_tasks(&data))
}

/// `POST /nodes/{node}/status command=shutdown` (`Sys.PowerMgmt`).
pub async fn shutdown(client: &PveClient, node: &str) -> Result<(), PveError> {
    let path = format!("/nodes/{}/status", percent_encode(node));
    client
        .post(&path, "/nodes/{node}/status", &[("command", "shutdown")])
        .await
        .map(drop)
}

/// `POST /nodes/{node}/wakeonlan`: run by the node the API is served from,
/// which sends the packet to the MAC in `{node}`'s config. Returns it.
pub async fn wake_on_lan(client: &PveClient, node: &str) -> Result<String, PveError> {
    let path = format!("/nodes/{}/wakeonlan", percent_encode(node));
    let data = client.post(&path, "/nodes/{node}/wakeonlan", &[]).await?;
    Ok(data.as_str().unwrap_or_default().to_string())
}

/// Whether the API answers at all (a standalone node's API sleeps with it).
pub async fn answers(client: &PveClient) -> bool {
    client.get("/version", "/version").await.is_ok()
}
