//! Talking to the CA: the HTTP client, the account, and one order.

pub mod account;
pub mod http;
pub mod order;
