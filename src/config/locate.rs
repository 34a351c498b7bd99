//! Maps a path inside the YAML document (`routes.wiki.host`) to the line and
//! column where it was written, so errors found after deserialization
//! (duplicate hosts, unknown dependencies, unreadable files) still point at
//! the right place in the file.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a path: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

/// Where each node of the document starts: for a mapping entry, the position
/// of its value (a path ending at a key points at the value written after it).
#[derive(Debug, Default)]
pub struct Locator {
    values: HashMap<Vec<Seg>, Position>,
    keys: HashMap<Vec<Seg>, Position>,
}

impl Locator {
    /// Builds the index. A document the YAML parser rejects gives an empty
    /// locator; the deserializer reports that syntax error itself.
    pub fn new(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Locator::default();
        }
        Locator {
            values: builder.values,
            keys: builder.keys,
        }
    }

    /// The position of the value at `path`, or of the closest ancestor that
    /// was written (a missing key is reported at its parent mapping).
    pub fn value(&self, path: &[Seg]) -> Option<Position> {
        self.values.get(path).copied().or_else(|| {
            // A block mapping "starts" where its first entry is, which says
            // little; the key that names the parent is where a human looks.
            (0..path.len())
                .rev()
                .find_map(|n| {
                    self.keys
                        .get(&path[..n])
                        .or_else(|| self.values.get(&path[..n]))
                })
                .copied()
        })
    }

    /// The position of the key that ends `path` (falls back like `value`).
    pub fn key(&self, path: &[Seg]) -> Option<Position> {
        self.keys.get(path).copied().or_else(|| self.value(path))
    }
}

enum Frame {
    Mapping {
        next_key: Option<String>,
        expecting_key: bool,
    },
    Sequence {
        next_index: usize,
    },
}

#[derive(Default)]
struct Builder {
    path: Vec<Seg>,
    stack: Vec<Frame>,
    values: HashMap<Vec<Seg>, Position>,
    keys: HashMap<Vec<Seg>, Position>,
    /// Per open collection: whether it pushed a path segment on start.
    pushed: Vec<bool>,
}

fn position(mark: &Marker) -> Position {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Position {
        line: mark.line(),
        col: mark.col() + 1,
    }
}

impl Builder {
    /// Called when a node (scalar or collection) starts; returns false when
    /// the node is a mapping key rather than a value.
    fn begin_node(&mut self, mark: &Marker, scalar: Option<&str>) -> bool {
        match self.stack.last_mut() {
            Some(Frame::Mapping {
                next_key,
                expecting_key,
            }) if *expecting_key => {
                *expecting_key = false;
                let key = scalar.unwrap_or_default().to_string();
                *next_key = Some(key.clone());
                let mut key_path = self.path.clone();
                key_path.push(Seg::Key(key));
                self.keys.insert(key_path, position(mark));
                false
            }
            Some(Frame::Mapping {
                next_key,
                expecting_key,
            }) => {
                *expecting_key = true;
                let key = next_key.take().unwrap_or_default();
                self.path.push(Seg::Key(key));
                self.values.insert(self.path.clone(), position(mark));
                true
            }
            Some(Frame::Sequence { next_index }) => {
                self.path.push(Seg::Index(*next_index));
                *next_index += 1;
                self.values.insert(self.path.clone(), position(mark));
                true
            }
            None => {
                self.values.insert(Vec::new(), position(mark));
                false
            }
        }
    }

    fn end_value(&mut self, pushed: bool) {
        if pushed {
            self.path.pop();
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                let pushed = self.begin_node(&mark, Some(&value));
                self.end_value(pushed);
            }
            Event::Alias(_) => {
                let pushed = self.begin_node(&mark, None);
                self.end_value(pushed);
            }
            Event::MappingStart(..) => {
                let pushed = self.begin_node(&mark, None);
                self.stack.push(Frame::Mapping {
                    next_key: None,
                    expecting_key: true,
                });
                self.pushed.push(pushed);
            }
            Event::SequenceStart(..) => {
                let pushed = self.begin_node(&mark, None);
                self.stack.push(Frame::Sequence { next_index: 0 });
                self.pushed.push(pushed);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                let pushed = self.pushed.pop().unwrap_or(false);
                self.end_value(pushed);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(segs: &[Seg]) -> Vec<Seg> {
        segs.to_vec()
    }

    #[test]
    fn finds_nested_values_and_keys() {
        let text =
            "listen:\n  http: 0.0.0.0:80\nroutes:\n  wiki:\n    hosts: [a, b]\n    port: 80\n";
        let loc = Locator::new(text);
        let http = path(&["listen".into(), "http".into()]);
        assert_eq!(loc.value(&http), Some(Position { line: 2, col: 9 }));
        assert_eq!(loc.key(&http), Some(Position { line: 2, col: 3 }));
        let b = path(&["routes".into(), "wiki".into(), "hosts".into(), 1.into()]);
        assert_eq!(loc.value(&b), Some(Position { line: 5, col: 16 }));
        let port = path(&["routes".into(), "wiki".into(), "port".into()]);
        assert_eq!(loc.value(&port), Some(Position { line: 6, col: 11 }));
    }

    #[test]
    fn missing_key_falls_back_to_parent() {
        let text = "routes:\n  wiki:\n    port: 80\n";
        let loc = Locator::new(text);
        let missing = path(&["routes".into(), "wiki".into(), "guest".into()]);
        assert_eq!(loc.value(&missing), Some(Position { line: 2, col: 3 }));
    }

    #[test]
    fn sequences_of_mappings() {
        let text = "proxmox:\n  - name: a\n    url: x\n  - name: b\n    url: y\n";
        let loc = Locator::new(text);
        let url = path(&["proxmox".into(), 1.into(), "url".into()]);
        assert_eq!(loc.value(&url), Some(Position { line: 5, col: 10 }));
    }
}
