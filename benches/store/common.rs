//! What every implementation shares: the configuration stored in each entry, the entry
//! record (the crate's encoding, re-stated here because `format.rs` is private), names,
//! and the layout helpers used to populate directories outside the timed sections.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use runstate::{InstanceId, State};
use serde::{Deserialize, Serialize};

/// A sandbox launcher's per-application configuration, about 1.8 KiB encoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchConfig {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub enable: Enable,
    pub binds: Vec<Bind>,
    pub seccomp_profile: String,
    pub cgroup: String,
    pub memory_limit: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enable {
    pub network: bool,
    pub gpu: bool,
    pub audio: bool,
    pub wayland: bool,
    pub x11: bool,
    pub dbus: bool,
    pub camera: bool,
    pub printing: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bind {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

pub fn launch_config() -> LaunchConfig {
    let s = |x: &str| x.to_string();
    let argv = [
        "/usr/lib/firefox/firefox",
        "--name",
        "org.mozilla.firefox",
        "--no-remote",
        "--profile",
        "/home/user/.var/app/org.mozilla.firefox/profile",
        "--new-window",
        "https://example.org/some/long/path?query=value&other=thing",
    ]
    .map(s)
    .to_vec();
    let env = [
        ("HOME", "/home/user"),
        ("USER", "user"),
        ("LANG", "en_US.UTF-8"),
        ("LC_ALL", "en_US.UTF-8"),
        ("TERM", "xterm-256color"),
        (
            "PATH",
            "/app/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ("XDG_DATA_DIRS", "/app/share:/usr/share:/usr/local/share"),
        (
            "XDG_CONFIG_HOME",
            "/home/user/.var/app/org.mozilla.firefox/config",
        ),
        (
            "XDG_CACHE_HOME",
            "/home/user/.var/app/org.mozilla.firefox/cache",
        ),
        ("XDG_SESSION_TYPE", "wayland"),
        ("WAYLAND_DISPLAY", "wayland-0"),
        ("DISPLAY", ":0"),
        ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1000/bus"),
        ("PULSE_SERVER", "unix:/run/user/1000/pulse/native"),
        ("GTK_THEME", "Adwaita:dark"),
        ("MOZ_ENABLE_WAYLAND", "1"),
        ("SANDBOX_APP_ID", "org.mozilla.firefox"),
        ("SANDBOX_INSTANCE", "3f6c1f0e9a2b4d7c8e5a1b2c3d4e5f60"),
    ]
    .map(|(k, v)| (s(k), s(v)))
    .into_iter()
    .collect();
    let binds = [
        ("/home/user/Downloads", "/home/user/Downloads", false),
        (
            "/home/user/.var/app/org.mozilla.firefox",
            "/home/user/.var/app/org.mozilla.firefox",
            false,
        ),
        ("/usr/share/fonts", "/usr/share/fonts", true),
        ("/usr/share/icons", "/usr/share/icons", true),
        ("/etc/resolv.conf", "/etc/resolv.conf", true),
        ("/etc/ssl/certs", "/etc/ssl/certs", true),
        (
            "/run/user/1000/wayland-0",
            "/run/user/1000/wayland-0",
            false,
        ),
        ("/run/user/1000/pulse", "/run/user/1000/pulse", false),
        ("/dev/dri", "/dev/dri", false),
    ]
    .map(|(a, b, ro)| Bind {
        source: s(a),
        target: s(b),
        read_only: ro,
    })
    .to_vec();
    LaunchConfig {
        argv,
        env,
        cwd: s("/home/user"),
        uid: 1000,
        gid: 1000,
        enable: Enable {
            network: true,
            gpu: true,
            audio: true,
            wayland: true,
            x11: false,
            dbus: true,
            camera: false,
            printing: false,
        },
        binds,
        seccomp_profile: s("/usr/share/launcher/seccomp/default-with-ptrace-denied.bpf"),
        cgroup: s("/sys/fs/cgroup/user.slice/user-1000.slice/app-org.mozilla.firefox.scope"),
        memory_limit: 4 << 30,
    }
}

pub type Entry = State<LaunchConfig>;

/// The template every save starts from; only `id` changes between saves. Its pid is a live
/// child's, as a launcher's would be. Whatever `State::new` puts in `process` stays: if it is
/// `None`, `Cursor::save` (as of this writing) identifies the process from `/proc` on every
/// save, and so do the others; if `State::new` captured the identity, every implementation
/// stores it as given (see [`identity`]).
pub fn template(pid: u32) -> Entry {
    State::new(InstanceId::from_bytes([0; 16]), pid, launch_config())
}

/// `n` states from `template`, each with a fresh id.
pub fn states(template: &Entry, n: usize) -> Vec<Entry> {
    ids(n)
        .into_iter()
        .map(|id| {
            let mut s = template.clone();
            s.id = id;
            s
        })
        .collect()
}

/// The crate's `ProcessIdentity` on the wire: `{start_time, boot_id, start_exact,
/// pidfs_inode?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcIdent {
    pub start_time: u64,
    pub boot_id: String,
    #[serde(default)]
    pub start_exact: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidfs_inode: Option<u64>,
}

impl From<&runstate::ProcessIdentity> for ProcIdent {
    fn from(p: &runstate::ProcessIdentity) -> ProcIdent {
        ProcIdent {
            start_time: p.start_time,
            boot_id: p.boot_id.clone(),
            start_exact: p.start_exact,
            pidfs_inode: p.pidfs_inode,
        }
    }
}

/// The identity a save of `state` records, as the crate's save decides it: the state's own,
/// or else the one `identify` reads from `/proc` (the crate fills it in when it is `None`).
pub fn identity(
    state: &Entry,
    identify: impl FnOnce(u32) -> Option<ProcIdent>,
) -> Option<ProcIdent> {
    match &state.process {
        Some(p) => Some(p.into()),
        None => identify(state.pid),
    }
}

/// Field 22 of a `/proc/<pid>/stat` line, counted from the last `)` (as the crate does).
pub fn parse_start_time(stat: &[u8]) -> Option<u64> {
    let after = &stat[stat.iter().rposition(|&b| b == b')')? + 1..];
    std::str::from_utf8(after)
        .ok()?
        .split_ascii_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()
}

/// The identity from the two files' contents.
pub fn ident(stat: &[u8], boot_id: &[u8]) -> Option<ProcIdent> {
    let boot_id = std::str::from_utf8(boot_id).ok()?.trim();
    Some(ProcIdent {
        start_time: parse_start_time(stat)?,
        boot_id: (!boot_id.is_empty()).then(|| boot_id.to_owned())?,
        // Outside a time namespace, as the bench runs; the pidfs inode is not read here.
        start_exact: true,
        pidfs_inode: None,
    })
}

pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The crate's record (src/format.rs), field for field.
#[derive(Serialize, Deserialize)]
struct Time {
    secs: i64,
    nanos: u32,
}

#[derive(Serialize)]
struct RecordRef<'a, C> {
    version: u32,
    id: InstanceId,
    pid: u32,
    time: Time,
    process: Option<&'a ProcIdent>,
    config: &'a C,
}

#[derive(Deserialize)]
struct Record<C> {
    version: u32,
    id: InstanceId,
    pid: u32,
    time: Time,
    #[serde(default)]
    process: Option<ProcIdent>,
    config: C,
}

/// A decoded entry, as the floor and tokio-fs implementations return it. The fields are
/// only looked at through `black_box`, as a caller would look at them.
#[derive(Debug)]
#[allow(dead_code)]
pub struct Decoded {
    pub id: InstanceId,
    pub pid: u32,
    pub time: SystemTime,
    pub process: Option<ProcIdent>,
    pub config: LaunchConfig,
}

/// Appends the crate's encoding of `state`, with `process` as its identity, to `out`.
pub fn encode(state: &Entry, process: Option<&ProcIdent>, out: &mut Vec<u8>) {
    let d = state.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let record = RecordRef {
        version: 1,
        id: state.id,
        pid: state.pid,
        time: Time {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        process,
        config: &state.config,
    };
    record
        .serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
        .expect("encode");
}

/// Decodes an entry and checks it as the crate does (version, time range, id = file name).
pub fn decode(bytes: &[u8], expect: InstanceId) -> Result<Decoded, String> {
    let r: Record<LaunchConfig> = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
    if r.version == 0 {
        return Err("version 0".into());
    }
    if r.id != expect {
        return Err("id mismatch".into());
    }
    if r.time.nanos >= 1_000_000_000 || r.time.secs < 0 {
        return Err("time out of range".into());
    }
    Ok(Decoded {
        id: r.id,
        pid: r.pid,
        time: UNIX_EPOCH + Duration::new(r.time.secs as u64, r.time.nanos),
        process: r.process,
        config: r.config,
    })
}

/// An entry file name: 32 lowercase hex digits, NUL-terminated.
pub fn entry_name(id: InstanceId) -> [u8; 33] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 33];
    for (i, b) in id.as_bytes().iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    out
}

/// The id an entry file name stands for, if it is one (exactly 32 lowercase hex digits).
pub fn parse_entry_name(name: &[u8]) -> Option<InstanceId> {
    if name.len() != 32 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0u8; 16];
    for (i, pair) in name.chunks_exact(2).enumerate() {
        bytes[i] = (nib(pair[0])? << 4) | nib(pair[1])?;
    }
    Some(InstanceId::from_bytes(bytes))
}

/// The aid a state directory name stands for: 1-4 digits, no leading zero, <= 9999.
pub fn parse_aid_name(name: &[u8]) -> Option<u16> {
    let ok = !name.is_empty()
        && name.len() <= 4
        && name.iter().all(u8::is_ascii_digit)
        && (name[0] != b'0' || name.len() == 1);
    ok.then(|| name.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}

/// `/proc/self/fd/<fd>` as a C string in a stack buffer.
pub fn proc_fd_path(fd: i32, buf: &mut [u8; 32]) -> &std::ffi::CStr {
    let mut w = &mut buf[..];
    write!(w, "/proc/self/fd/{fd}\0").expect("fits");
    std::ffi::CStr::from_bytes_until_nul(&buf[..]).expect("nul")
}

/// `n` fresh random ids.
pub fn ids(n: usize) -> Vec<InstanceId> {
    (0..n).map(|_| InstanceId::random()).collect()
}
