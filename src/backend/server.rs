//! A llama-server child process with the same GGUF, context size, batch sizes and threads as
//! `inproc`, bound to 127.0.0.1 on a free port.
//!
//! The child must never outlive ttft: it is killed on drop (also during a panic's unwinding), it
//! gets `PR_SET_PDEATHSIG` so the kernel kills it if ttft itself is killed, and it runs in its own
//! process group so a Ctrl-C in the terminal reaches ttft (which then stops it) and not the server
//! in the middle of a request.

use super::{LlamaParams, OpenError};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running llama-server that is stopped when this value is dropped.
pub struct ServerProcess {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// Where the server's stdout and stderr go (kept in the output folder).
    pub log_path: PathBuf,
    /// The full argument list, for the report.
    pub args: Vec<String>,
    /// Spawn → `/health` answering 200, milliseconds.
    pub start_ms: f64,
}

/// A child process tied to ttft: output to `log`, killed by the kernel when ttft dies
/// (`PR_SET_PDEATHSIG`), in its own process group so a terminal's Ctrl-C reaches only ttft.
fn tied_command(bin: &Path, log: &Path) -> std::io::Result<Command> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    Ok(cmd)
}

/// A port the OS considers free right now on 127.0.0.1.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether `port` can be bound on 127.0.0.1 right now (checked before timing for `--server-port`).
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The server's arguments for `params`: each llama.cpp knob is set explicitly rather than left to
/// defaults that differ between the server and the library.
///
/// `slots` requests can run at once (`--parallel`); the context grows with them so every slot
/// keeps the full `ctx_size` (llama-server splits `--ctx-size` between its slots).
pub fn server_args(
    params: &LlamaParams,
    alias: &str,
    port: u16,
    slots: u32,
    rpc: &[String],
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--model".into(),
        params.gguf.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--ctx-size".into(),
        (params.ctx_size * slots.max(1)).to_string(),
        "--threads".into(),
        params.threads.to_string(),
        "--threads-batch".into(),
        params.threads.to_string(),
        "--batch-size".into(),
        params.batch.to_string(),
        "--ubatch-size".into(),
        params.ubatch.to_string(),
        "--n-gpu-layers".into(),
        params.n_gpu_layers.to_string(),
        "--flash-attn".into(),
        params.flash_attn.to_string(),
        "--cache-type-k".into(),
        params.cache_type_k.clone(),
        "--cache-type-v".into(),
        params.cache_type_v.clone(),
        // One slot by default: the whole context for one request, like the single in-process
        // context; more only for load runs.
        "--parallel".into(),
        slots.max(1).to_string(),
        // No host-RAM prompt cache: it would restore an earlier prompt's KV state.
        "--cache-ram".into(),
        "0".into(),
        "--alias".into(),
        alias.into(),
        "--no-ui".into(),
        // Prometheus `/metrics`: load points are aligned with the server's own counters.
        "--metrics".into(),
    ];
    if !rpc.is_empty() {
        // llama.cpp's RPC backend: the model's layers are split across the workers, which count
        // as devices, so layers must be offloaded for them to be used at all.
        a.extend(["--rpc".into(), rpc.join(",")]);
        if params.n_gpu_layers == 0 {
            let i = a
                .iter()
                .position(|x| x == "--n-gpu-layers")
                .expect("always set")
                + 1;
            a[i] = "999".into();
        }
    }
    a
}

/// `rpc-server` workers on 127.0.0.1 (`--spawn-rpc N`), stopped (and killed with ttft) like the
/// server.
pub struct RpcWorkers {
    children: Vec<Child>,
    /// `host:port` of each worker, for llama-server's `--rpc`.
    pub endpoints: Vec<String>,
}

impl RpcWorkers {
    /// Start `n` workers of `bin` with `threads` threads each and wait until they accept.
    pub fn spawn(bin: &Path, n: u32, threads: u32, log_dir: &Path) -> Result<Self, OpenError> {
        if !bin.exists() {
            return Err(OpenError::Server(format!(
                "rpc-server not found at {}: run scripts/setup.sh --tools",
                bin.display()
            )));
        }
        let mut w = RpcWorkers {
            children: Vec::new(),
            endpoints: Vec::new(),
        };
        for i in 0..n {
            let port = free_port().map_err(|e| OpenError::Server(format!("no free port: {e}")))?;
            let mut cmd = tied_command(bin, &log_dir.join(format!("rpc-server-{i}.log")))
                .map_err(|e| OpenError::Server(format!("rpc-server log: {e}")))?;
            let (p, th) = (port.to_string(), threads.to_string());
            cmd.args(["-H", "127.0.0.1", "-p", &p, "-t", &th]);
            let child = cmd
                .spawn()
                .map_err(|e| OpenError::Server(format!("cannot start {}: {e}", bin.display())))?;
            w.children.push(child);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let t0 = Instant::now();
            let _says = super::waiting::Waiting::start(
                &format!("rpc-server {i} to listen on 127.0.0.1:{port}"),
                "rpc start",
                "up to 20 s",
            );
            while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
                if t0.elapsed() > Duration::from_secs(20) {
                    return Err(OpenError::Server(format!(
                        "rpc-server on port {port} did not start"
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            w.endpoints.push(format!("127.0.0.1:{port}"));
        }
        Ok(w)
    }

    /// Process ids of the workers.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for RpcWorkers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What to start: the binary, the llama.cpp settings shared with inproc, and the server's own.
#[derive(Debug, Clone, Copy)]
pub struct ServerSpec<'a> {
    /// The llama-server binary.
    pub bin: &'a Path,
    /// Model, context, threads, batch sizes, GPU layers.
    pub params: &'a LlamaParams,
    /// `--alias`.
    pub alias: &'a str,
    /// A fixed port (None: a free one).
    pub port: Option<u16>,
    /// `--parallel`.
    pub slots: u32,
    /// RPC workers (`--rpc`).
    pub rpc: &'a [String],
    /// stdout and stderr go here.
    pub log_path: &'a Path,
    /// Spawn → healthy, at most.
    pub timeout: Duration,
}

impl ServerProcess {
    /// Start the server and wait until `/health` answers 200 (or the child exits, or the timeout).
    pub fn spawn(spec: &ServerSpec) -> Result<Self, OpenError> {
        let (bin, port) = (spec.bin, spec.port);
        if !bin.exists() {
            return Err(OpenError::Server(format!(
                "llama-server not found at {}: run scripts/setup.sh (or pass --server-bin)",
                bin.display()
            )));
        }
        // A port can be taken between our probe and the server's bind: try a few.
        let mut last_err = None;
        for _ in 0..3 {
            match Self::try_spawn(spec) {
                Ok(s) => return Ok(s),
                Err((e, retry)) => {
                    last_err = Some(e);
                    if !retry || port.is_some() {
                        break;
                    }
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn try_spawn(spec: &ServerSpec) -> Result<Self, (OpenError, bool)> {
        let (bin, log_path, timeout) = (spec.bin, spec.log_path, spec.timeout);
        let port = match spec.port {
            Some(p) => p,
            None => {
                free_port().map_err(|e| (OpenError::Server(format!("no free port: {e}")), false))?
            }
        };
        let args = server_args(spec.params, spec.alias, port, spec.slots, spec.rpc);
        let mut cmd = tied_command(bin, log_path).map_err(|e| {
            (
                OpenError::Server(format!(
                    "cannot write server log {}: {e}",
                    log_path.display()
                )),
                false,
            )
        })?;
        cmd.args(&args);
        let t0 = Instant::now();
        let child = cmd.spawn().map_err(|e| {
            (
                OpenError::Server(format!(
                    "cannot start {}: {e} (run scripts/setup.sh, or pass --server-bin)",
                    bin.display()
                )),
                false,
            )
        })?;
        crate::bench::interrupt::set_server_pid(child.id());
        let mut server = ServerProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log_path: log_path.to_path_buf(),
            args,
            start_ms: 0.0,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let _says = super::waiting::Waiting::start(
            &format!(
                "llama-server to load {} ({}/health)",
                spec.params.gguf.display(),
                server.url
            ),
            "server start",
            &format!("up to {:.0} s", timeout.as_secs_f64()),
        );
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let tail = log_tail(log_path, 5);
                let port_clash = tail.contains("bind") || tail.contains("address already in use");
                return Err((
                    OpenError::Server(format!(
                        "llama-server exited during startup ({status}); last log lines ({}): {}",
                        log_path.display(),
                        tail
                    )),
                    port_clash,
                ));
            }
            if health_ok(addr) {
                server.start_ms = t0.elapsed().as_secs_f64() * 1e3;
                return Ok(server);
            }
            if t0.elapsed() > timeout {
                return Err((
                    OpenError::Server(format!(
                        "llama-server did not become healthy within {:.0} s (log: {})",
                        timeout.as_secs_f64(),
                        log_path.display()
                    )),
                    false,
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The process id (tests check it is gone after ttft ends).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop the server: SIGTERM, then SIGKILL if it has not exited within two seconds.
    pub fn stop(&mut self) {
        crate::bench::interrupt::set_server_pid(0);
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET /health` with a plain socket: true on HTTP 200.
fn health_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")
}

/// The last `n` non-empty lines of a log file, joined with " | ".
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_args_mirror_inproc_params() {
        let p = LlamaParams {
            gguf: "m.gguf".into(),
            ctx_size: 2048,
            threads: 3,
            batch: 2048,
            ubatch: 512,
            n_gpu_layers: 0,
            flash_attn: crate::backend::FlashAttn::Off,
            cache_type_k: "q8_0".into(),
            cache_type_v: "f16".into(),
        };
        let a = server_args(&p, "alias", 8080, 1, &[]).join(" ");
        let four = server_args(&p, "alias", 8080, 4, &[]).join(" ");
        assert!(four.contains("--parallel 4 ") && four.contains("--ctx-size 8192 "));
        let two = ["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        let rpc = server_args(&p, "alias", 8080, 1, &two).join(" ");
        assert!(rpc.ends_with("--rpc 127.0.0.1:1,127.0.0.1:2"), "{rpc}");
        assert!(rpc.contains("--n-gpu-layers 999"), "{rpc}");
        for want in [
            "--ctx-size 2048",
            "--threads 3",
            "--threads-batch 3",
            "--host 127.0.0.1",
            "--parallel 1",
            "--cache-ram 0",
            "--batch-size 2048",
            "--ubatch-size 512",
            "--flash-attn off",
            "--cache-type-k q8_0",
            "--cache-type-v f16",
        ] {
            assert!(a.contains(want), "{want} missing in {a}");
        }
    }
}
