//! `auto_routes:` as written (README.md, "Routes from Proxmox tags"): the opt-in tag and domain,
//! and any per-route key as the defaults of the routes it makes. The
//! per-route keys are read by the very schema of a route, so every key a
//! route accepts is accepted here too, and a typo is an error the same way.

use super::schema::RawRoute;
use super::values::EnvString;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;

#[derive(Debug)]
pub struct RawAutoRoutes {
    pub tag: Option<EnvString>,
    pub domain: Option<EnvString>,
    /// `port`, `scheme` and every per-route setting; the keys that name a
    /// route's host or guest are refused by validation.
    pub route: RawRoute,
}

impl<'de> Deserialize<'de> for RawAutoRoutes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawAutoRoutes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map with `domain`, optionally `tag`, `port` and route settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawAutoRoutes, A::Error> {
                let mut own = OwnKeys {
                    inner: map,
                    tag: None,
                    domain: None,
                };
                let route = RawRoute::deserialize(de::value::MapAccessDeserializer::new(&mut own))?;
                Ok(RawAutoRoutes {
                    tag: own.tag,
                    domain: own.domain,
                    route,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// Passes a map on to a route's deserializer, keeping `tag` and `domain`
/// for itself.
struct OwnKeys<A> {
    inner: A,
    tag: Option<EnvString>,
    domain: Option<EnvString>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for OwnKeys<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.inner.next_key::<String>()? else {
                return Ok(None);
            };
            match key.as_str() {
                "tag" => self.tag = Some(self.inner.next_value()?),
                "domain" => self.domain = Some(self.inner.next_value()?),
                _ => return seed.deserialize(key.into_deserializer()).map(Some),
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.inner.next_value_seed(seed)
    }
}
