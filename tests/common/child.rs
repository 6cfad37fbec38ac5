//! The harness of the multi-process tests, shared by every suite that runs other processes.
//!
//! Other processes are the very test binary, run again with only one test selected
//! ([`test_command`]), in a role named by [`ROLE`] ([`role_command`], [`role`]) and with
//! environment variables saying the rest. A child announces its
//! progress with `@@<TAG> <value>` lines on stdout ([`say`]), which the parent waits for with
//! [`Kid::expect`]; the parent checks every child's exit status and prints its output when it
//! fails.

use std::io::{BufRead as _, Read as _, Write as _};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::time::timeout;

/// The one bound on "this must not hang" ([`super::DEADLOCK`]), here too so that the
/// multi-process suites find it beside the rest of their harness.
pub use super::DEADLOCK;

/// The tokio runtime a child runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Current,
    Multi,
}

impl Flavor {
    /// The name passed to a child, which [`Flavor::from_name`] reads back.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Current => "current",
            Flavor::Multi => "multi",
        }
    }

    pub fn from_name(name: &str) -> Flavor {
        match name {
            "current" => Flavor::Current,
            "multi" => Flavor::Multi,
            other => panic!("unknown flavor {other}"),
        }
    }

    pub fn other(self) -> Flavor {
        match self {
            Flavor::Current => Flavor::Multi,
            Flavor::Multi => Flavor::Current,
        }
    }

    /// This flavor for even `i`, the other for odd.
    pub fn alternate(self, i: usize) -> Flavor {
        if i % 2 == 0 { self } else { self.other() }
    }

    /// A runtime of this flavor for a child process (two workers when multi-threaded).
    pub fn runtime(self) -> tokio::runtime::Runtime {
        let mut builder = match self {
            Flavor::Current => tokio::runtime::Builder::new_current_thread(),
            Flavor::Multi => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(2);
                b
            }
        };
        builder.enable_all().build().unwrap()
    }
}

/// The libtest arguments that run only the test `test`, with its output shown.
pub fn test_args(test: &str) -> [&str; 4] {
    ["--exact", test, "--nocapture", "--test-threads=1"]
}

/// A command that runs this test binary again with only the test `test` selected.
pub fn test_command(test: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(test_args(test));
    cmd
}

/// A child process running this binary in some role. Threads pass its stdout lines and its
/// stderr to the async side; it is killed if dropped unreaped.
pub struct Kid {
    what: String,
    pub child: std::process::Child,
    status: Option<ExitStatus>,
    /// The child's stdin, if the command piped it; [`Kid::drain`] closes it.
    pub stdin: Option<std::process::ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    seen: Vec<String>,
}

/// Spawns `cmd` with its stdout and stderr piped to the returned [`Kid`]; its stdin is as
/// `cmd` sets it. `what` names the child in panic messages.
pub fn spawn_kid(what: impl Into<String>, mut cmd: std::process::Command) -> Kid {
    let what = what.into();
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    Kid {
        what,
        stdin: child.stdin.take(),
        child,
        status: None,
        lines,
        stderr: Some(stderr),
        seen: Vec::new(),
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Kid {
    /// Waits for the child's next `@@<tag>` line and returns what follows the tag.
    pub async fn expect(&mut self, tag: &str) -> String {
        loop {
            let line = match timeout(DEADLOCK, self.lines.recv()).await {
                Err(_) => {
                    let report = self
                        .report(&format!("no @@{tag} within {DEADLOCK:?}"))
                        .await;
                    panic!("{report}")
                }
                Ok(None) => {
                    let report = self.report(&format!("stdout closed before @@{tag}")).await;
                    panic!("{report}")
                }
                Ok(Some(line)) => line,
            };
            self.seen.push(line.clone());
            if let Some(pos) = line.find("@@") {
                if let Some(rest) = line[pos + 2..].strip_prefix(tag) {
                    return rest.trim().to_owned();
                }
            }
        }
    }

    /// Kills the child and describes it, with everything it printed, for a panic message.
    pub async fn report(&mut self, why: &str) -> String {
        let pid = self.child.id();
        let _ = self.child.kill();
        let (out, err) = self.drain().await;
        format!(
            "{} (pid {pid}): {why}\nstatus: {:?}\n--- stdout ---\n{}\n{out}\n--- stderr ---\n{err}",
            self.what,
            self.status,
            self.seen.join("\n"),
        )
    }

    /// Closes stdin, waits for the exit (killing the child after [`DEADLOCK`]) and returns
    /// the rest of stdout and all of stderr.
    pub async fn drain(&mut self) -> (String, String) {
        drop(self.stdin.take());
        let start = Instant::now();
        while self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
            if self.status.is_none() {
                if start.elapsed() > DEADLOCK {
                    let _ = self.child.kill();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let mut out = Vec::new();
        while let Some(line) = timeout(DEADLOCK, self.lines.recv()).await.ok().flatten() {
            out.push(line);
        }
        let err = match self.stderr.take() {
            Some(reader) => tokio::task::spawn_blocking(move || reader.join())
                .await
                .unwrap()
                .unwrap_or_default(),
            None => String::new(),
        };
        (out.join("\n"), err)
    }

    /// Closes the child's stdin, lets it run to its end and asserts that it succeeded.
    pub async fn finish(mut self) {
        let (out, err) = self.drain().await;
        if !self.status.is_some_and(|s| s.success()) {
            panic!(
                "{} failed: {:?}\n--- stdout ---\n{}\n{out}\n--- stderr ---\n{err}",
                self.what,
                self.status,
                self.seen.join("\n"),
            );
        }
    }

    /// Like [`Kid::finish`], and asserts too that the child printed nothing to stderr.
    pub async fn finish_quietly(mut self) {
        let (out, err) = self.drain().await;
        if !self.status.is_some_and(|s| s.success()) || !err.is_empty() {
            panic!(
                "{} failed or complained: {:?}\n--- stdout ---\n{}\n{out}\n--- stderr ---\n{err}",
                self.what,
                self.status,
                self.seen.join("\n"),
            );
        }
    }

    /// SIGKILLs the child, and asserts that it was still running when it got the signal: a
    /// child that found a broken invariant exits by itself, with a panic.
    pub async fn kill(mut self) {
        let _ = self.child.kill();
        let (out, err) = self.drain().await;
        if self.status.and_then(|s| s.signal()) != Some(9) {
            panic!(
                "{} had ended before it was killed: {:?}\n--- stdout ---\n{}\n{out}\n--- stderr ---\n{err}",
                self.what,
                self.status,
                self.seen.join("\n"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The child side.

/// Prints a message that the parent's [`Kid::expect`] picks up.
pub fn say(msg: impl std::fmt::Display) {
    // libtest may have written "test <name> ... " without a newline.
    println!("\n@@{msg}");
    std::io::stdout().flush().unwrap();
}

/// The environment variable `name`, which the parent must have set.
pub fn child_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// The base seed of the random tests: [`super::seed`] (`RUNSTATE_SEED` or
/// `RUNSTATE_TEST_SEED` if set, else `default`).
pub fn base_seed(default: u64) -> u64 {
    super::seed(default)
}

// ---------------------------------------------------------------------------------------
// Roles: the one way a suite re-runs its test binary as another process.

/// The environment variable that names the role a re-run test binary plays. The entry test
/// of a suite's children ([`role`]) does nothing when it is not set.
pub const ROLE: &str = "RUNSTATE_CHILD_ROLE";

/// The role this process was started in by [`role_command`]; `None` in a normal test run.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// A command that runs this test binary again, with only the test `test` selected, in
/// `role` (read back by [`role`]). Its stdio is as the caller sets it.
pub fn role_command(test: &str, role: &str) -> std::process::Command {
    let mut cmd = test_command(test);
    cmd.env(ROLE, role);
    cmd
}

/// Like [`role_command`], with the test binary started by `wrapper` (a program and its
/// arguments, e.g. `unshare --time` or a shell that sets signal dispositions and `exec`s
/// its arguments), to which this binary and its arguments are appended.
pub fn wrapped_role_command(wrapper: &[&str], test: &str, role: &str) -> std::process::Command {
    let (program, args) = wrapper.split_first().expect("a wrapper names a program");
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .arg(std::env::current_exe().unwrap())
        .args(test_args(test))
        .env(ROLE, role);
    cmd
}

/// Runs `body` in a child process that runs only the test `name` of this binary (in the role
/// `name`), so that a stack overflow, which aborts the process, fails that test alone and
/// says so. The child's output goes to files, not pipes: it may be large.
pub fn isolated(name: &str, body: impl FnOnce()) {
    if role().as_deref() == Some(name) {
        body();
        return;
    }
    let logs = super::run_dir();
    let (out, err) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = role_command(name, name)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{name}: the child process hung (deadlock?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out).unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap();
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    assert!(
        status.success(),
        "{name} failed in its child process ({status}):\n{}\n{}",
        tail(&stdout),
        tail(&stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "{name}: the child ran no test:\n{stdout}"
    );
    eprint!("{}", tail(&stderr));
}

/// In a child process: a panic in any task or thread ends the process at once, so the parent
/// sees a child that stopped by itself instead of one it had to kill.
pub fn exit_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(101);
    }));
}
