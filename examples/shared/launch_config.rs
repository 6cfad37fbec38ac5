//! The launch configuration the examples store with each instance.
//!
//! Included by the examples with `#[path = "shared/launch_config.rs"] mod launch_config;`, so
//! it is an ordinary module, not a crate of its own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How an instance was launched: the config type of the examples, shared by `supervisor`
/// (which writes entries with it) and `ps` (which lists them).
///
/// The store keeps it inside each entry as a MessagePack map with these field names, so any
/// MessagePack reader can make sense of it. `ps` does not need this type to read an entry:
/// it decodes any config generically and shows its `command` field when there is one, so it
/// also lists instances that other launchers saved with other config types.
///
/// Fields with `#[serde(default)]` may be missing from an entry, so entries written before a
/// field existed still decode.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LaunchConfig {
    /// The program and its arguments, as given to `execve`. Required: an instance without a
    /// command line is not worth recording.
    pub command: Vec<String>,
    /// Environment variables set for the child, on top of the supervisor's own.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The child's working directory; `None` means the supervisor's.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// What the sandbox lets the program share with the host.
    #[serde(default)]
    pub flags: SandboxFlags,
}

/// Sandbox switches. Each defaults to `false`, the closed choice, so a flag missing from an
/// old entry reads as "not shared".
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct SandboxFlags {
    /// Use the host's network namespace instead of a private one.
    pub share_net: bool,
    /// Give the program the host's PulseAudio socket.
    pub share_pulse: bool,
    /// Map the real uid into the sandbox instead of an unprivileged one.
    pub map_real_uid: bool,
}
