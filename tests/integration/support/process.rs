//! The real `composer-proxy` binary as a child process, for what an in-process proxy cannot
//! show: `kill -9`, signals, exit statuses, and several processes sharing one cache directory.
//! Its JSON log (stderr) is collected line by line; tests wait on log lines, never on time.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a test waits for the proxy to say something before failing.
const LOG_WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// Appends each line of `stream` to the log as it arrives.
fn collect(stream: impl std::io::Read + Send + 'static, sink: Arc<Log>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut lines = sink.lines.lock().unwrap_or_else(|e| e.into_inner());
            lines.push(line);
            sink.grew.notify_all();
        }
    });
}

pub struct ProxyProcess {
    child: Child,
    log: Arc<Log>,
    pub url: String,
    /// The address it listens on (differs from `url` behind a balancer).
    pub listen: String,
    pub pid: u32,
}

impl ProxyProcess {
    /// Starts the binary with exactly these settings (plus a loopback ephemeral port and JSON
    /// logs) and waits until it is listening.
    pub fn start(env: &[(String, String)]) -> ProxyProcess {
        Self::start_with_args(&[], env)
    }

    /// Like `start`, with command-line arguments, e.g. `["--config", path]`.
    pub fn start_with_args(args: &[&str], env: &[(String, String)]) -> ProxyProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_composer-proxy"));
        cmd.args(args);
        Self::spawn(cmd, env)
    }

    /// Like `start`, under an open-file limit of `nofile` (soft and hard), set by `prlimit`.
    pub fn start_with_open_files(nofile: u64, env: &[(String, String)]) -> ProxyProcess {
        Self::spawn(Self::with_open_files(nofile), env)
    }

    /// Runs the binary under an open-file limit of `nofile` expecting it not to start: its
    /// exit status and everything it wrote, within the safety net.
    pub fn refused_with_open_files(nofile: u64, env: &[(String, String)]) -> (ExitStatus, String) {
        let mut cmd = Self::with_open_files(nofile);
        cmd.env_clear()
            .env("COMPOSER_PROXY_LISTEN", "127.0.0.1:0")
            .env("COMPOSER_PROXY_LOG_FORMAT", "json")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("prlimit starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the proxy started under a limit it should refuse");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let output = child.wait_with_output().expect("output");
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status, text)
    }

    /// prlimit sets the limit on itself and execs the proxy, so the pid is the proxy's.
    fn with_open_files(nofile: u64) -> Command {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_composer-proxy"));
        cmd
    }

    fn spawn(mut cmd: Command, env: &[(String, String)]) -> ProxyProcess {
        cmd.env_clear()
            .env("COMPOSER_PROXY_LISTEN", "127.0.0.1:0")
            .env("COMPOSER_PROXY_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the proxy binary starts");
        let log = Arc::new(Log::default());
        // Logs go to stderr; stdout is collected too, so tests see every byte it prints.
        collect(child.stderr.take().expect("stderr is piped"), log.clone());
        collect(child.stdout.take().expect("stdout is piped"), log.clone());
        let pid = child.id();
        let mut process = ProxyProcess {
            child,
            log,
            url: String::new(),
            listen: String::new(),
            pid,
        };
        let line = process
            .wait_for_log(|v| v["message"] == "composer-proxy listening")
            .unwrap_or_else(|| panic!("the proxy did not start: {}", process.log_text()));
        process.url = line["public_url"]
            .as_str()
            .expect("public_url in the start-up line")
            .to_string();
        process.listen = line["listen"]
            .as_str()
            .expect("listen in the start-up line")
            .to_string();
        process
    }

    /// Waits (bounded) for a JSON log line matching `pred`, searching from the start.
    pub fn wait_for_log(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.wait_for_logs(1, pred)
            .and_then(|found| found.into_iter().next())
    }

    /// Waits (bounded) until at least `count` JSON log lines match `pred`, and returns every
    /// line that matches by then. Lines reach the log when the proxy's background writer gets
    /// to them, so a client having finished does not mean its access lines are all there.
    pub fn wait_for_logs(&self, count: usize, pred: impl Fn(&Value) -> bool) -> Option<Vec<Value>> {
        let deadline = Instant::now() + LOG_WAIT;
        let mut lines = self.log.lines.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let found: Vec<Value> = lines
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| pred(v))
                .collect();
            if found.len() >= count {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self
                .log
                .grew
                .wait_timeout(lines, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        self.log
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Sends a signal by name (`TERM`, `HUP`, …) with kill(1), so no unsafe FFI is needed.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid.to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -s {name} {}", self.pid);
    }

    /// SIGKILL: no clean-up of any kind can run.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + LOG_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the proxy did not exit");
            // Exit is an event with no notification in std; poll it, bounded by the deadline.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The secret `composer-proxy tokens create` prints, on a line of its own.
pub fn created_secret(stdout: &str) -> String {
    stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cpt_") && !l.contains(' '))
        .unwrap_or_else(|| panic!("no secret in: {stdout}"))
        .to_string()
}
