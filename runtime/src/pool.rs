//! A small persistent thread pool for the matrix products (std only).
//!
//! [`run`]`(n, threads, f)` calls `f(i)` once for every task `i` in `0..n`, on the calling
//! thread and up to `threads - 1` pool workers, and returns when all of them have finished.
//! Decode runs ~200 products per token, each 10-50 µs, so a job must cost little: publishing
//! one is a few atomic stores, nothing is allocated, and workers that are already spinning
//! pick it up without a system call.
//!
//! - Workers are spawned lazily, the first time a job needs them, and live until the process
//!   exits. Between jobs a worker spins for [`SPIN`], then parks, so an idle pool burns no CPU.
//! - Tasks are claimed from a shared counter: the caller claims too, and keeps claiming after
//!   its first task, so a worker that is slow to wake (a busy machine, a parked worker) does
//!   not hold back the tasks it has not claimed: with no worker awake, the caller runs every
//!   task itself.
//! - One job runs at a time. A second thread calling [`run`] while a job is in flight, or a job
//!   calling [`run`] from inside (nested), runs its tasks in turn on its own thread instead of
//!   waiting: correct, never a deadlock.
//! - A panic in `f` is caught where it happens (worker or caller), the job still completes
//!   (every other task runs), and [`run`] then re-raises the first panic on the caller, only
//!   after no worker uses `f` any more, so `f` is never used after the borrow it came from ends.
//!
//! Protocol. `word` holds `(sequence << 16) | t` of the job in flight, `t` the threads it may
//! use (`t = 0`: no job). A worker that sees a new word with `t` above its index registers in
//! `active`, checks that the word is still the same (else it leaves), and only then reads the
//! job (`job`, a pointer to the closure, and `tasks`, both stored before the word was
//! published) and claims tasks from `next`. The caller, once `done` counts all the tasks,
//! closes the job (`t = 0`) and waits until `active` is 0 before it returns: a worker either
//! registered before the close, and is waited for, or sees the closed word and never touches
//! the job (every access is SeqCst, so of the worker's register-then-check and the caller's
//! close-then-check, one sees the other).
//!
//! Sleeping uses a flag per waiter: the waiter raises its flag, re-checks its condition, then
//! parks; the waker changes the condition, then takes the flag and unparks (`unpark` before
//! `park` makes `park` return at once).

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker (or a waiting caller) spins before it parks: the gap between two
/// products of one token is a few microseconds, so a worker that spins that long is still
/// awake for the next product, and parking costs a system call on both sides.
pub const SPIN: Duration = Duration::from_micros(100);

/// Most threads one job can use (the `t` field of the published word).
pub const MAX_THREADS: usize = 1 << 15;

struct Worker {
    thread: Thread,
    sleeping: Arc<AtomicBool>,
    /// For pinning it to a core (see [`worker_handles`]).
    #[cfg(unix)]
    pthread: std::os::unix::thread::RawPthread,
}

/// What the caller of a job holds (the lock): the workers and the sequence of the last job.
struct Roster {
    workers: Vec<Worker>,
    seq: usize,
}

struct Pool {
    /// `(seq << 16) | threads` of the job in flight; `threads = 0` when none is.
    word: AtomicUsize,
    /// `*const &dyn Fn(usize)` of the job in flight: valid while registered in `active`.
    job: AtomicPtr<()>,
    /// Tasks of the job in flight.
    tasks: AtomicUsize,
    /// The next task to claim.
    next: AtomicUsize,
    /// Tasks finished.
    done: AtomicUsize,
    /// Workers registered on the current job (they may read `job`).
    active: AtomicUsize,
    /// The first panic of an `f(i)` in the current job, re-raised on the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// The caller is parked (or about to park) waiting on `done` or `active`.
    caller_parked: AtomicBool,
    /// The thread of the job in flight's caller, to unpark.
    caller: Mutex<Option<Thread>>,
    roster: Mutex<Roster>,
}

static POOL: Pool = Pool {
    word: AtomicUsize::new(0),
    job: AtomicPtr::new(core::ptr::null_mut()),
    tasks: AtomicUsize::new(0),
    next: AtomicUsize::new(0),
    done: AtomicUsize::new(0),
    active: AtomicUsize::new(0),
    panic: Mutex::new(None),
    caller_parked: AtomicBool::new(false),
    caller: Mutex::new(None),
    roster: Mutex::new(Roster { workers: Vec::new(), seq: 0 }),
};

thread_local! {
    /// Set on pool workers: a job that calls [`run`] runs its tasks serially.
    static IS_WORKER: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Spin on `ready` for [`SPIN`], then park until it holds. `flag` is this waiter's "parked"
/// flag: raised before the last check, lowered by the waker (or here when that check succeeds).
fn wait_until(mut ready: impl FnMut() -> bool, flag: &AtomicBool) {
    let start = Instant::now();
    let mut spins = 0u32;
    while !ready() {
        core::hint::spin_loop();
        spins += 1;
        if spins.is_multiple_of(64) && start.elapsed() > SPIN {
            loop {
                flag.store(true, SeqCst);
                if ready() {
                    flag.store(false, SeqCst);
                    return;
                }
                thread::park();
            }
        }
    }
}

/// Wake the caller if it is parked (after changing what it waits on).
fn wake_caller() {
    if POOL.caller_parked.swap(false, SeqCst) {
        if let Some(t) = POOL.caller.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            t.unpark();
        }
    }
}

/// Claim and run tasks of the job until none is left.
fn claim_all(f: &(dyn Fn(usize) + Sync), n: usize) {
    loop {
        let i = POOL.next.fetch_add(1, SeqCst);
        if i >= n {
            return;
        }
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
            POOL.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
        }
        if POOL.done.fetch_add(1, SeqCst) + 1 == n {
            wake_caller();
        }
    }
}

fn worker_loop(index: usize, sleeping: Arc<AtomicBool>) {
    IS_WORKER.with(|w| w.set(true));
    let mut seen = 0usize;
    let mut cursor = [(0u64, 0u64); 2];
    loop {
        wait_until(
            || {
                idle_prefetch(&mut cursor);
                POOL.word.load(SeqCst) != seen
            },
            &sleeping,
        );
        let word = POOL.word.load(SeqCst);
        seen = word;
        if index >= word & 0xffff {
            continue; // no job, or not one for this worker
        }
        POOL.active.fetch_add(1, SeqCst);
        if POOL.word.load(SeqCst) == word {
            // SAFETY: registered in `active` while the job is still published: its caller
            // does not return (ending the borrow of `f` and of the `&dyn Fn` that `job` points
            // to) before `active` is 0 again, and stores no other job before it returns.
            let f = unsafe { *(POOL.job.load(SeqCst) as *const &'static (dyn Fn(usize) + Sync)) };
            claim_all(f, POOL.tasks.load(SeqCst));
        }
        // No use of the job after this.
        if POOL.active.fetch_sub(1, SeqCst) == 1 {
            wake_caller();
        }
    }
}

/// Ranges an idle worker may pull into its cache (see [`prefetch`]), each in one word so that a
/// worker never pairs one range's start with another's length: the address in the low 48 bits
/// (user-space addresses fit), the length in 64-byte lines above; 0 = none.
static PF: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

const PF_ADDR: u64 = (1 << 48) - 1;

/// Ask idle workers to pull `ranges` (the start of the next product's weights) into their
/// cache while the caller works alone; they stop at the next job. At most 4 MiB of each.
pub fn prefetch(ranges: [&[u8]; 2]) {
    for (slot, r) in PF.iter().zip(ranges) {
        let lines = (r.len() as u64).div_ceil(64).min(0xFFFF);
        slot.store((r.as_ptr() as u64 & PF_ADDR) | lines << 48, SeqCst);
    }
}

/// A few cache lines of the posted ranges, alternating between them. `cursor` holds each
/// range's next and end address.
fn idle_prefetch(cursor: &mut [(u64, u64); 2]) {
    for (c, slot) in cursor.iter_mut().zip(&PF) {
        let w = slot.swap(0, SeqCst);
        if w != 0 {
            let start = w & PF_ADDR;
            *c = (start, start + (w >> 48) * 64);
        }
        for _ in 0..4 {
            if c.0 < c.1 {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: prefetch never faults, whatever the address.
                unsafe {
                    core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>(c.0 as usize as *const i8)
                };
                c.0 += 64;
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
            Ok(h) => roster.workers.push(Worker {
                thread: h.thread().clone(),
                sleeping,
                #[cfg(unix)]
                pthread: std::os::unix::thread::JoinHandleExt::as_pthread_t(&h),
            }),
            Err(_) => break,
        }
    }
}

/// The POSIX thread handles of workers 1..=`want` (spawned now if they were not yet; fewer if
/// the OS refuses threads), in the order jobs use them: a job on `t` threads runs on the caller
/// and workers 1..t. For the binary to pin them to cores; the workers live until the process
/// exits, so the handles stay valid.
#[cfg(unix)]
pub fn worker_handles(want: usize) -> Vec<std::os::unix::thread::RawPthread> {
    let mut roster = POOL.roster.lock().unwrap_or_else(|e| e.into_inner());
    grow(&mut roster, want.min(MAX_THREADS - 1));
    roster.workers.iter().take(want).map(|w| w.pthread).collect()
}

/// Workers spawned so far (the calling thread is not counted).
pub fn workers() -> usize {
    POOL.roster.lock().map_or_else(|e| e.into_inner().workers.len(), |r| r.workers.len())
}

/// Call `f(i)` once for every task `i` in `0..n`, in parallel on the calling thread and up to
/// `min(n, threads) - 1` pool workers (each claims tasks until none is left); return when every
/// call has returned.
///
/// Runs the tasks in turn on the calling thread when `n <= 1` or `threads <= 1`, when called
/// from inside a job, or while another thread's job holds the pool.
///
/// # Panics
/// If any `f(i)` panicked (on any thread), with the first such panic's payload, after every
/// other task has run.
pub fn run(n: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    if n <= 1 || threads <= 1 || IS_WORKER.with(|w| w.get()) {
        return (0..n).for_each(f);
    }
    let mut roster = match POOL.roster.try_lock() {
        Ok(r) => r,
        // A panic propagated from an earlier job poisons the lock, but that job had finished.
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => return (0..n).for_each(f),
    };
    let helpers = (n.min(threads) - 1).min(MAX_THREADS - 1);
    grow(&mut roster, helpers);
    let helpers = helpers.min(roster.workers.len());
    roster.seq = roster.seq % (usize::MAX >> 16) + 1;
    let word = (roster.seq << 16) | (helpers + 1);
    {
        let mut caller = POOL.caller.lock().unwrap_or_else(|e| e.into_inner());
        if caller.as_ref().map(Thread::id) != Some(thread::current().id()) {
            *caller = Some(thread::current());
        }
    }
    // SAFETY (the lifetime erased here): workers read `f` through `job` as
    // `&'static dyn Fn`, but only while registered in `active` on this job's word; this
    // function does not return, and does not unwind (its own calls of `f` are caught), before
    // it has closed the word and seen `active` at 0, so `f` outlives every use. The lock held
    // in `roster` keeps any other caller from storing another job meanwhile.
    POOL.job.store(&f as *const &(dyn Fn(usize) + Sync) as *mut (), SeqCst);
    POOL.tasks.store(n, SeqCst);
    POOL.next.store(0, SeqCst);
    POOL.done.store(0, SeqCst);
    POOL.word.store(word, SeqCst);
    for w in &roster.workers[..helpers] {
        if w.sleeping.swap(false, SeqCst) {
            w.thread.unpark();
        }
    }
    // The caller's share: whatever it claims (all of it when no worker is awake). Panics of
    // `f` are caught inside, so nothing unwinds past the waits below.
    claim_all(f, n);
    wait_until(|| POOL.done.load(SeqCst) >= n, &POOL.caller_parked);
    // Close the job, then wait for the workers still registered on it.
    POOL.word.store(roster.seq << 16, SeqCst);
    wait_until(|| POOL.active.load(SeqCst) == 0, &POOL.caller_parked);
    let panic = POOL.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(roster);
    if let Some(p) = panic {
        // The panic hook already reported it on the thread where it happened.
        resume_unwind(p);
    }
}
