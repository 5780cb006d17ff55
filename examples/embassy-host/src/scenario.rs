//! Issue 6's firmware-style scenario, shared word for word by the host example (this crate)
//! and the firmware example (`../embassy-firmware`, which includes this file with
//! `#[path]`). The including crate defines `out!` (a `println!`-like macro) before
//! `mod scenario;`.
//!
//! - `sensor`: samples every [`SAMPLE_EVERY`] until its context is cancelled.
//! - `radio`: sends packets, each under its own deadline (`with_timeout` + `run`): the first
//!   times out, the second gets through, the third is cut short by the shutdown.
//! - `supervisor` (the main task): cancels the root with a cause when the (simulated)
//!   button is pressed, then gives the tasks a grace period to stop.
//!
//! Every task prints when it saw the cancel and why (`err` and `cause`).
//!
//! Heap API for now: every context here is a heap node (`Context`, needs a global
//! allocator, `embedded-alloc` on the firmware). When kontext's static and pinned nodes land
//! (issue 6, `notes/issue-6-design.md`), switching is local: the root becomes a
//! `static` node attached once in `supervisor`, the tasks and `Why` take `&'static Ctx` /
//! `&Ctx` instead of `Context` (they only observe: `err`, `cause`, `run`, `done`, `sleep`;
//! `kontext_embassy::ContextExt` is implemented for `Ctx`), and each packet's deadline context becomes a `DeadlineNode` pinned in
//! `radio`'s future instead of `with_timeout`. The cause needs `alloc` (it is boxed) until
//! static causes exist. The lines to change are marked `heap API:`.

use core::fmt;
use core::time::Duration;

use embassy_executor::Spawner;
use embassy_time::{Ticker, Timer};
use kontext_embassy::{CancelHandle, Context, ContextExt, Error};

/// How often the sensor samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Packets: (time on air, deadline for the send).
pub const PACKETS: [(Duration, Duration); 3] = [
    (Duration::from_millis(300), Duration::from_millis(200)), // times out
    (Duration::from_millis(120), Duration::from_millis(200)), // gets through
    (Duration::from_millis(900), Duration::from_millis(1000)), // cut short by the button
];
/// Pause between two packets.
pub const PACKET_GAP: Duration = Duration::from_millis(100);
/// When the (simulated) button is pressed, after boot.
pub const BUTTON_AT: Duration = Duration::from_millis(1100);
/// How long the supervisor waits for the tasks to stop after the cancel.
pub const GRACE: Duration = Duration::from_millis(500);

/// Milliseconds since boot, for the trace.
fn now_ms() -> u64 {
    embassy_time::Instant::now().as_millis()
}

/// One trace line, stamped with the time since boot.
macro_rules! say {
    ($($arg:tt)*) => {
        out!("[{:>5} ms] {}", now_ms(), format_args!($($arg)*))
    };
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64 // u64: formatting a u128 costs ~1.5 KiB of flash
}

/// kontext takes `core::time::Duration`; embassy has its own (whole ticks).
fn ticks(d: Duration) -> embassy_time::Duration {
    embassy_time::Duration::from_micros(d.as_micros() as u64)
}

/// The cancel cause the supervisor gives: which button ended the run.
#[derive(Debug, Clone, Copy)]
pub struct ButtonPressed {
    /// The GPIO pin of the button.
    pub pin: u8,
}

impl fmt::Display for ButtonPressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "button on pin {} pressed: shutdown", self.pin)
    }
}

impl core::error::Error for ButtonPressed {}

/// `err = ..., cause = ...` of a context, for the trace.
struct Why<'a>(&'a Context);

impl fmt::Display for Why<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0.err(), self.0.cause()) {
            (Some(err), Some(cause)) => write!(f, "err = {err:?} ({err}), cause = \"{cause}\""),
            _ => f.write_str("not done"),
        }
    }
}

/// A transmission that takes `air` on air (a real radio driver awaits its TX-done
/// interrupt here).
async fn transmit(air: Duration) {
    Timer::after(ticks(air)).await;
}

/// Samples every [`SAMPLE_EVERY`] until `ctx` is cancelled. `_exit` is cancelled when the
/// task ends (a `CancelHandle` cancels on drop), which is how the supervisor learns it.
// heap API: `ctx: &'static Ctx` with static/pinned nodes.
#[embassy_executor::task]
pub async fn sensor(ctx: Context, _exit: CancelHandle) {
    let mut ticker = Ticker::every(ticks(SAMPLE_EVERY));
    let mut samples = 0u32;
    say!("sensor: sampling every {} ms", ms(SAMPLE_EVERY));
    loop {
        // The wait for the next tick ends early, and is dropped, when `ctx` is cancelled.
        match ctx.run(ticker.next()).await {
            Ok(()) => {
                samples += 1;
                let milli_celsius = 21_000 + 37 * samples;
                say!("sensor: sample #{samples}: {milli_celsius} m°C");
            }
            Err(_) => {
                say!("sensor: saw cancel after {samples} samples: {}", Why(&ctx));
                return;
            }
        }
    }
}

/// Sends [`PACKETS`], each under its own deadline, then waits for the shutdown.
// heap API: `ctx: &'static Ctx`, and a pinned `DeadlineNode` per packet.
#[embassy_executor::task]
pub async fn radio(ctx: Context, _exit: CancelHandle) {
    for (n, (air, deadline)) in PACKETS.into_iter().enumerate() {
        let n = n + 1;
        // A child with a deadline: cancelled at `deadline`, or with `ctx`, whichever is
        // first. `_cancel` cancels it when it goes out of scope (Go's `defer cancel()`).
        let (send, _cancel) = ctx.with_timeout(deadline);
        say!(
            "radio: packet #{n}: sending ({} ms on air, deadline {} ms)",
            ms(air),
            ms(deadline)
        );
        match send.run(transmit(air)).await {
            Ok(()) => say!("radio: packet #{n}: sent"),
            Err(Error::DeadlineExceeded) if !ctx.is_cancelled() => {
                // Only this send's deadline: the radio carries on.
                say!(
                    "radio: packet #{n}: deadline passed, TX aborted: {}",
                    Why(&send)
                );
            }
            Err(_) => {
                say!("radio: packet #{n}: saw cancel during TX: {}", Why(&send));
                return;
            }
        }
        if ctx.sleep(PACKET_GAP).await.is_err() {
            say!("radio: saw cancel between packets: {}", Why(&ctx));
            return;
        }
    }
    say!("radio: idle until shutdown");
    ctx.done().await;
    say!("radio: saw cancel while idle: {}", Why(&ctx));
}

/// The main task: starts the tasks, cancels everything with a cause when the button is
/// pressed, and waits (at most [`GRACE`]) for the tasks to stop.
pub async fn supervisor(spawner: Spawner) {
    // heap API: a `static` root node attached here, `Pin::static_ref(&ROOT).attach(...)`.
    let root = kontext_embassy::background(); // deadlines on embassy-time's clock
    let (system, power) = root.child();
    // Exit signals: each task holds a handle; dropping it at the task's end cancels these.
    let (sensor_exited, sensor_exit) = root.child();
    let (radio_exited, radio_exit) = root.child();

    say!("supervisor: starting sensor and radio");
    spawner.spawn(sensor(system.clone(), sensor_exit).expect("sensor task already running"));
    spawner.spawn(radio(system.clone(), radio_exit).expect("radio task already running"));

    // Simulated button: on hardware, `ExtiInput::wait_for_falling_edge().await` (or an
    // interrupt handler calling `cancel_with_cause`, which is safe from an ISR with the
    // `critical-section` feature).
    Timer::after(ticks(BUTTON_AT)).await;
    let button = ButtonPressed { pin: 13 };
    say!("supervisor: {button} -> cancelling the root");
    power.cancel_with_cause(button);
    say!("supervisor: root: {}", Why(&system));

    let (grace, _grace_cancel) = root.with_timeout(GRACE);
    let stopped = grace
        .run(async {
            sensor_exited.done().await;
            radio_exited.done().await;
        })
        .await;
    match stopped {
        Ok(()) => say!("supervisor: all tasks stopped, halting"),
        Err(_) => say!("supervisor: grace period over: {}", Why(&grace)),
    }
}
