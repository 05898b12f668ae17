//! Running a pipeline whose source listens (MLLP, HTTP): start it, wait for its port, stop
//! it with SIGTERM and read its summary and outputs.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BIN;

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until 127.0.0.1:`port` accepts connections (panics after `limit`).
pub fn wait_for_port(port: u16, limit: Duration) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < limit, "port {port} did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `plexus run` on the pipeline, once its port accepts connections.
pub fn serve(p: &Path, port: u16) -> Child {
    serve_env(p, port, &[])
}

/// As `serve`, with extra environment variables (secrets) for the server only.
pub fn serve_env(p: &Path, port: u16, env: &[(&str, &str)]) -> Child {
    let child = Command::new(BIN)
        .args(["run", p.to_str().unwrap(), "--json"])
        .envs(env.iter().copied())
        .current_dir(p.parent().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_port(port, Duration::from_secs(30));
    child
}

/// SIGTERM, then the exit status, the JSON summary and stderr.
pub fn stop(child: Child) -> (Option<i32>, serde_json::Value, String) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "summary: {e}\nstdout: {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code(), summary, stderr)
}

/// The output's rows as JSON.
pub fn rows(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
