//! A small persistent thread pool for the matrix products (std only).
//!
//! [`run`]`(n, f)` calls `f(i)` once for every `i` in `0..n`: index 0 on the calling thread,
//! the others on pool workers, and returns when all of them have finished. Decode runs ~200
//! products per token, each 10-50 µs, so a job must cost little: publishing one is a few atomic
//! stores, nothing is allocated, and workers that are already spinning pick it up without a
//! system call.
//!
//! - Workers are spawned lazily, the first time a job needs them (`n - 1` of them at most), and
//!   live until the process exits. Between jobs a worker spins for [`SPIN`], then parks, so an
//!   idle pool burns no CPU.
//! - One job runs at a time. A second thread calling [`run`] while a job is in flight, or a job
//!   calling [`run`] from inside (nested), runs its indices in turn on its own thread instead of
//!   waiting: correct, never a deadlock.
//! - A panic in `f` on a worker is caught there, the job still completes (every other index
//!   runs), and [`run`] then panics on the caller. A panic on the caller's own index is
//!   re-raised only after every worker has finished with `f`, so `f` is never used after the
//!   borrow it came from ends.
//!
//! Protocol. The pool's `word` holds `(sequence << 16) | n` of the latest job. A worker
//! remembers the last word it saw; a new word with `n` above its index means "run `f(index)`",
//! where `f` is read through `job`, a pointer the caller stored before it published the word
//! (Release/Acquire). The caller waits until `pending` (the workers still running) reaches 0
//! before it returns or publishes another job, so a participating worker never misses a job and
//! never reads a stale or dangling `job`. Sleeping uses a flag per waiter: the waiter sets its
//! flag, re-checks its condition, then parks; the waker changes the condition, then takes the
//! flag and unparks (SeqCst on both sides, so one of them always sees the other; `unpark` before
//! `park` makes `park` return at once).

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::*};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker (or a waiting caller) spins before it parks: the gap between two
/// products of one token is a few microseconds, so a worker that spins that long is still
/// awake for the next product, and parking costs a system call on both sides.
pub const SPIN: Duration = Duration::from_micros(100);

/// Most threads one job can use (the `n` field of the published word).
pub const MAX_THREADS: usize = 1 << 15;

/// What one job's workers read: the borrowed closure and who to wake when they are done.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync + 'a),
    caller: Thread,
}

struct Worker {
    thread: Thread,
    sleeping: Arc<AtomicBool>,
}

/// The lock the caller of a job holds: the workers, and the sequence number of the last job.
struct Roster {
    workers: Vec<Worker>,
    seq: usize,
}

struct Pool {
    /// `(seq << 16) | n` of the latest job (0 before the first).
    word: AtomicUsize,
    /// `*const Job` of the latest job, valid while its `pending` is above 0.
    job: AtomicPtr<()>,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    /// A worker's `f` panicked during the current job.
    panicked: AtomicBool,
    /// The `seq` of the job whose caller is parked waiting for `pending` to reach 0, or 0.
    caller_wait: AtomicUsize,
    roster: Mutex<Roster>,
}

static POOL: Pool = Pool {
    word: AtomicUsize::new(0),
    job: AtomicPtr::new(core::ptr::null_mut()),
    pending: AtomicUsize::new(0),
    panicked: AtomicBool::new(false),
    caller_wait: AtomicUsize::new(0),
    roster: Mutex::new(Roster { workers: Vec::new(), seq: 0 }),
};

thread_local! {
    /// Set on pool workers: a job that calls [`run`] runs its indices serially.
    static IS_WORKER: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Spin on `ready` for [`SPIN`], then park until it holds. `arm` raises this waiter's "parked"
/// flag before the last check (the waker takes the flag and unparks), `disarm` lowers it when
/// that check succeeds.
fn wait_until<T>(mut ready: impl FnMut() -> Option<T>, arm: impl Fn(), disarm: impl Fn()) -> T {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        core::hint::spin_loop();
        spins += 1;
        if spins % 64 == 0 && start.elapsed() > SPIN {
            break;
        }
    }
    loop {
        arm();
        if let Some(v) = ready() {
            disarm();
            return v;
        }
        thread::park();
    }
}

fn worker_loop(index: usize, sleeping: Arc<AtomicBool>) {
    IS_WORKER.with(|w| w.set(true));
    let pool = &POOL;
    let mut seen = 0usize;
    loop {
        let word = wait_until(
            || Some(pool.word.load(SeqCst)).filter(|&w| w != seen),
            || sleeping.store(true, SeqCst),
            || sleeping.store(false, SeqCst),
        );
        seen = word;
        if index >= word & 0xffff {
            continue; // not in this job
        }
        // SAFETY: `job` was stored before `word` was published, and its caller does not return
        // (ending the borrows in `Job`) or store another job before this worker decrements
        // `pending` below; the word we saw is the caller's latest (a job that includes this
        // worker cannot be followed by another before this worker finishes it).
        let job = unsafe { &*(pool.job.load(Acquire) as *const Job<'static>) };
        if catch_unwind(AssertUnwindSafe(|| (job.f)(index))).is_err() {
            pool.panicked.store(true, SeqCst);
        }
        let caller = job.caller.clone();
        // `job` must not be touched after this decrement: the caller may return at once.
        if pool.pending.fetch_sub(1, SeqCst) == 1 {
            let seq = word >> 16;
            if pool.caller_wait.compare_exchange(seq, 0, SeqCst, SeqCst).is_ok() {
                caller.unpark();
            }
        }
    }
}

/// Spawn workers until `roster` holds `want` (fewer if the OS refuses threads).
fn grow(roster: &mut Roster, want: usize) {
    while roster.workers.len() < want {
        let index = roster.workers.len() + 1;
        let sleeping = Arc::new(AtomicBool::new(false));
        let flag = sleeping.clone();
        match thread::Builder::new().name(format!("edge-pool-{index}")).spawn(move || worker_loop(index, flag)) {
            Ok(h) => roster.workers.push(Worker { thread: h.thread().clone(), sleeping }),
            Err(_) => break,
        }
    }
}

/// Workers spawned so far (the calling thread is not counted).
pub fn workers() -> usize {
    POOL.roster.lock().map_or_else(|e| e.into_inner().workers.len(), |r| r.workers.len())
}

/// Call `f(i)` once for every `i` in `0..n`, in parallel on the calling thread (`i = 0`) and up
/// to `n - 1` pool workers; return when every call has returned.
///
/// Runs the indices in turn on the calling thread when `n <= 1`, when called from inside a job,
/// while another thread's job holds the pool, or when no worker could be spawned for an index
/// (then the caller runs the indices the workers could not take).
///
/// # Panics
/// If any `f(i)` panicked: the caller's own panic is re-raised, a worker's is reported as
/// "a thread-pool worker panicked" (its message was printed by the panic hook on that thread).
pub fn run(n: usize, f: &(dyn Fn(usize) + Sync)) {
    if n <= 1 || IS_WORKER.with(|w| w.get()) {
        return (0..n).for_each(f);
    }
    let mut roster = match POOL.roster.try_lock() {
        Ok(r) => r,
        // A panic propagated from an earlier job poisons the lock, but that job had finished.
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => return (0..n).for_each(f),
    };
    grow(&mut roster, (n - 1).min(MAX_THREADS - 1));
    let helpers = roster.workers.len().min(n - 1).min(MAX_THREADS - 1);
    roster.seq = roster.seq % (usize::MAX >> 16) + 1;
    let seq = roster.seq;
    let job = Job { f, caller: thread::current() };
    // SAFETY (the lifetime erased here): workers read `job` (and through it `f`) as
    // `Job<'static>`, but only between seeing this job's word and decrementing `pending`; this
    // function does not return, and does not unwind (the caller's own panic is caught), before
    // `pending` is 0, so `job` and the borrow `f` outlive every use. The lock held in `roster`
    // keeps any other caller from overwriting `job` meanwhile.
    POOL.panicked.store(false, Relaxed);
    POOL.pending.store(helpers, SeqCst);
    POOL.job.store(&job as *const Job<'_> as *mut (), SeqCst);
    POOL.word.store((seq << 16) | (helpers + 1), SeqCst);
    for w in &roster.workers[..helpers] {
        if w.sleeping.swap(false, SeqCst) {
            w.thread.unpark();
        }
    }
    // The caller's share: index 0, and the indices no worker could be spawned for.
    let own = catch_unwind(AssertUnwindSafe(|| {
        f(0);
        (helpers + 1..n).for_each(f);
    }));
    // Wait for the workers even if `f` panicked here: they still borrow `f` through `job`.
    wait_until(
        || (POOL.pending.load(SeqCst) == 0).then_some(()),
        || POOL.caller_wait.store(seq, SeqCst),
        || POOL.caller_wait.store(0, SeqCst),
    );
    POOL.caller_wait.store(0, SeqCst);
    let worker_panicked = POOL.panicked.load(SeqCst);
    drop(roster);
    if let Err(p) = own {
        resume_unwind(p);
    }
    if worker_panicked {
        panic!("a thread-pool worker panicked while running a matrix product (its message is above)");
    }
}
