//! Ctrl-C and SIGTERM: the first stops the benchmark after the run in progress (the summary and
//! reports of everything measured are still written, the server stopped); a second one exits at
//! once — but still kills the spawned llama-server first.
//!
//! The handler only touches atomics and calls `kill(2)` and `_exit(2)`, which are
//! async-signal-safe.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static SERVER_PID: AtomicI32 = AtomicI32::new(0);

/// Exit code after an interrupt (128 + SIGINT, the shell convention).
pub const EXIT_INTERRUPTED: i32 = 130;

extern "C" fn on_signal(_sig: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        let pid = SERVER_PID.load(Ordering::SeqCst);
        // SAFETY: kill and _exit are async-signal-safe.
        unsafe {
            if pid > 0 {
                libc::kill(pid, libc::SIGKILL);
            }
            libc::_exit(EXIT_INTERRUPTED);
        }
    }
}

/// Install the SIGINT/SIGTERM handlers (idempotent).
pub fn install() {
    // SAFETY: a plain sigaction with a handler that only uses async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Register the spawned server so a second signal can kill it (0 = none).
pub fn set_server_pid(pid: u32) {
    SERVER_PID.store(pid as i32, Ordering::SeqCst);
}
