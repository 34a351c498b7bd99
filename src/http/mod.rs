//! HTTP pieces that every part of drowsy shares: the field rules of both
//! HTTP paths and of forward auth, host (authority) parsing, drowsy's own
//! pages, and the body types (the response body carries the proxy's
//! guards: a request's slot, a backend connection's lease).

pub mod authority;
pub mod body;
pub mod fields;
pub mod pages;
