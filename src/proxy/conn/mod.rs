//! Client connections, from the accept to the last byte: the listeners
//! (`listener.rs`), the limits on connections and requests (`limits.rs`),
//! TLS (`tls.rs`), the socket as the HTTP servers see it (`io.rs`), the
//! worker threads (`workers.rs`), and what a request knows of its
//! connection (`info.rs`).

pub mod info;
pub mod io;
pub mod limits;
pub mod listener;
pub mod tls;
pub mod woken;
pub mod workers;
