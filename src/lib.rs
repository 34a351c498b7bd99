//! drowsy: a reverse proxy for Proxmox VE homelabs that puts idle guests to
//! sleep and wakes them on the next request.
//!
//! The modules follow the data path: [`proxy`] (listener → router →
//! forwarder) with [`idle`] (the gate between router and forwarder), and
//! beside them [`proxmox`] (API client and cluster cache), [`config`],
//! [`admin`], [`acme`] (automatic certificates), and [`sim`] (the
//! simulated cluster).

pub mod access;
pub mod acme;
pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod idle;
pub mod instances;
pub mod logging;
pub mod logs;
pub mod nodes;
pub mod proxmox;
pub mod proxy;
pub mod sim;
pub mod stats;
pub mod status;
pub mod tls_trust;
