//! A `tracing` subscriber that records every event with its level and fields, for the suites
//! that check what an operator sees (`diagnostics.rs`, `visible_failures.rs`).

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// One event as seen: its level and its fields (the message under "message").
#[derive(Debug, Clone)]
pub struct Seen {
    pub level: Level,
    pub fields: Vec<(String, String)>,
}

impl Seen {
    /// The field `name`, as text.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every field as `name=value `, in the order recorded.
    pub fn text(&self) -> String {
        self.fields
            .iter()
            .map(|(k, v)| format!("{k}={v} "))
            .collect()
    }
}

/// Records every event; clones share one record. Install it with
/// `tracing::subscriber::with_default` or `set_global_default`.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    /// Every event recorded and not taken yet.
    pub fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    /// Takes the events recorded whose message is `message`, leaving the others.
    pub fn take(&self, message: &str) -> Vec<Seen> {
        let mut seen = self.0.lock().unwrap();
        let (hit, rest): (Vec<Seen>, Vec<Seen>) = seen
            .drain(..)
            .partition(|s| s.get("message") == Some(message));
        *seen = rest;
        hit
    }

    /// Forgets every event recorded so far.
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        let seen = Seen {
            level: *event.metadata().level(),
            fields,
        };
        self.0.lock().unwrap().push(seen);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
