//! Configuration: YAML schema, `${VAR}` and `KEY_file` expansion,
//! validation with `file:line:col` errors, and conversion into the typed
//! runtime settings of [`runtime`].

pub mod runtime;

pub use runtime::*;
