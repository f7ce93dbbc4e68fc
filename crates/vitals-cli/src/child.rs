//! Child processes the CLI starts for itself (the fleet demo's `redis-server` and servers): killed
//! when their guard drops — on success, on error, on Ctrl-C — and, on Linux, also when this process
//! dies without running its destructors (SIGKILL), through the parent-death signal.

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustix::process::{Pid, Signal};

/// A running child process, SIGKILLed and reaped on drop.
pub(crate) struct Child {
    inner: std::process::Child,
    /// What it is, for messages ("redis-server", "server n1").
    name: String,
}

impl Child {
    /// Spawns `cmd` as `name`. The child gets SIGKILL if the thread that spawned it exits first:
    /// spawn from the thread that lives as long as the demo (the main thread, which polls the
    /// command's future), never from a short-lived blocking-pool thread.
    pub(crate) fn spawn(mut cmd: Command, name: &str) -> anyhow::Result<Child> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: the closure runs in the forked child before exec and only makes one
            // async-signal-safe system call (prctl); it allocates nothing and takes no lock.
            #[allow(unsafe_code)]
            unsafe {
                cmd.pre_exec(|| {
                    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                        .map_err(std::io::Error::from)
                });
            }
        }
        let inner = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Child {
            inner,
            name: name.to_string(),
        })
    }

    /// Its process id.
    pub(crate) fn id(&self) -> u32 {
        self.inner.id()
    }

    /// Its standard output, if it was piped and not taken yet.
    pub(crate) fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.inner.stdout.take()
    }

    /// Its exit status if it has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.inner.try_wait().ok().flatten()
    }

    /// Sends `signal` (e.g. [`Signal::TERM`] for a graceful drain).
    pub(crate) fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = Pid::from_child(&self.inner);
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("cannot signal {} (pid {pid})", self.name))
    }

    /// SIGKILL, then reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.inner.kill();
        let _ = self.inner.wait();
    }

    /// Waits up to `within` for it to exit (polling; async so the live view stays fresh).
    pub(crate) async fn wait_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a log file (for an error message), or a note that there is none.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            if tail.is_empty() {
                format!("{} is empty", path.display())
            } else {
                format!("last lines of {}:\n{tail}", path.display())
            }
        }
        Err(e) => format!("no log at {} ({e})", path.display()),
    }
}
