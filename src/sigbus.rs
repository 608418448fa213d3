//! A mapped checkpoint that shrinks under a running process (another program truncates or
//! rewrites it): reading a page past the file's new end raises SIGBUS, which would end the
//! process without a word. The handler says what happened, in the CLI's one-line form, and exits
//! with status 1.

const MESSAGE: &[u8] = b"edge-run: error: the checkpoint file shrank while in use (SIGBUS reading its memory map): another program truncated or rewrote it; rerun once the file is complete, or pass --no-mmap to read it into memory first\n";

extern "C" fn on_sigbus(_: libc::c_int) {
    // SAFETY: write(2) and _exit(2) are async-signal-safe; MESSAGE is a static buffer.
    unsafe {
        libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
        libc::_exit(1);
    }
}

/// Install the handler (once, at startup).
pub fn install() {
    // SAFETY: a zeroed `sigaction` is a valid value; its handler only calls async-signal-safe
    // functions; a failure leaves the default action, which is what happened before.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}
