//! Configuration: YAML schema, `${VAR}` and `KEY_file` expansion,
//! validation with `file:line:col` errors, and conversion into the typed
//! runtime settings of [`runtime`].

pub mod access;
mod auto;
mod error;
mod expand;
mod locate;
pub mod runtime;
mod schema;
pub mod tls_files;
mod validate;
mod values;

pub use access::{
    BasicAuthSettings, ForwardAuthSettings, HeaderRule, IpRules, PolicyKind, PolicySettings,
    RateSpec, RouteAccess,
};
pub use error::{ConfigError, ConfigErrors};
pub use runtime::*;
pub use validate::{
    decode_hmac_key, is_pve_tag, parse_host_pattern, DEFAULT_TAG, LETSENCRYPT, LETSENCRYPT_STAGING,
};
pub use values::{parse_duration, parse_size};

use std::path::Path;

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            pos: None,
            message: format!("cannot read the config file: {e}"),
            hint: Some("pass another file with --config PATH (or DROWSY_CONFIG)".into()),
        }])
    })?;
    parse(path, &text)
}

/// Parses and validates config text; `path` is used in messages and to
/// resolve relative file names.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let raw: schema::RawConfig = if text.trim().is_empty() {
        schema::RawConfig::default()
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| ConfigErrors(vec![error::from_yaml(path.to_path_buf(), text, &e)]))?
    };
    let locator = locate::Locator::new(text);
    validate::validate(raw, path, &locator)
}
