//! A firmware-style scenario (sensor, radio, supervisor), shared word for word by the host
//! example (this crate) and the firmware example (`../embassy-firmware`, which includes
//! this file with `#[path]`). The including crate defines `out!` (a `println!`-like
//! macro) before `mod scenario;`.
//!
//! - `sensor`: samples every [`SAMPLE_EVERY`] until its context is cancelled.
//! - `radio`: sends packets on a channel (a value in the context), each under its own
//!   deadline (a pinned `DeadlineNode` + `run`): the first times out, the second gets
//!   through, the third is cut short by the shutdown.
//! - `supervisor` (the main task): cancels the system root when the (simulated) button is
//!   pressed, then gives the tasks a grace period to stop.
//!
//! Every task prints when it saw the cancel and why (`err`).
//!
//! No heap: every context lives in memory the program provides (`kontext::node`). The
//! system root and the tasks' exit signals are `static` nodes attached once in
//! `supervisor`, below `kontext_embassy::root()` (embassy's clock); the radio's channel and
//! each packet's deadline are nodes pinned in the radio task's own future, and the grace
//! period's deadline one pinned in the supervisor's. The tasks take `&'static Ctx` and only
//! observe it (`err`, `run`, `done`, `sleep`: `kontext_embassy::ContextExt` is implemented
//! for `Ctx`). Without kontext's `alloc` feature there are no custom cancel causes: the
//! trace prints the error (`Cancelled`, `DeadlineExceeded`), and the supervisor says why it
//! cancelled.

use core::fmt;
use core::pin::{pin, Pin};
use core::time::Duration;

use embassy_executor::Spawner;
use embassy_time::{Ticker, Timer};
use kontext_embassy::node::{CancelNode, DeadlineNode, ValueNode};
use kontext_embassy::{ContextExt, Ctx, Error};

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

/// The button whose press shuts the system down.
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

/// The radio channel, carried by the radio's context (a `ValueNode`): what a driver
/// deeper down would read with `ctx.value::<Channel>()`.
#[derive(Debug, Clone, Copy)]
pub struct Channel(pub u8);

/// `err = ...` of a context, for the trace.
struct Why<'a>(&'a Ctx);

impl fmt::Display for Why<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.err() {
            Some(err) => write!(f, "err = {err:?} ({err})"),
            None => f.write_str("not done"),
        }
    }
}

/// The system's root, cancelled by the supervisor on shutdown. Its live children: one
/// packet's deadline at a time (the sensor and the radio use it directly).
static SYSTEM: CancelNode<'static, 4> = CancelNode::new();
/// Exit signals: a task cancels its own when it ends ([`Exit`]); the supervisor waits on
/// them. No children, one slot.
static SENSOR_EXIT: CancelNode<'static, 1> = CancelNode::new();
static RADIO_EXIT: CancelNode<'static, 1> = CancelNode::new();

/// Cancels an exit signal when dropped, so a task signals its end however it ends.
struct Exit(&'static CancelNode<'static, 1>);

impl Drop for Exit {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A transmission that takes `air` on air (a real radio driver awaits its TX-done
/// interrupt here).
async fn transmit(air: Duration) {
    Timer::after(ticks(air)).await;
}

/// Samples every [`SAMPLE_EVERY`] until `ctx` is cancelled, then cancels `exit`.
#[embassy_executor::task]
pub async fn sensor(ctx: &'static Ctx, exit: &'static CancelNode<'static, 1>) {
    let _exit = Exit(exit);
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
                say!("sensor: saw cancel after {samples} samples: {}", Why(ctx));
                return;
            }
        }
    }
}

/// Sends [`PACKETS`] on channel 11, each under its own deadline, then waits for the
/// shutdown; cancels `exit` when it ends.
#[embassy_executor::task]
pub async fn radio(ctx: &'static Ctx, exit: &'static CancelNode<'static, 1>) {
    let _exit = Exit(exit);
    // The channel as a value in the context, in a node pinned in this task's future.
    let radio = pin!(ValueNode::new());
    let radio = radio.as_ref().attach(ctx, Channel(11));
    for (n, (air, deadline)) in PACKETS.into_iter().enumerate() {
        let n = n + 1;
        // A child with a deadline, pinned in this future: cancelled at `deadline`, or with
        // `ctx`, whichever is first. It detaches from the tree at the end of the iteration.
        let send = pin!(DeadlineNode::<1>::new());
        let send = send.as_ref().attach_timeout(radio, deadline);
        let channel = send.value::<Channel>().map_or(0, |c| c.0);
        say!(
            "radio: packet #{n}: sending on channel {channel} ({} ms on air, deadline {} ms)",
            ms(air),
            ms(deadline)
        );
        match send.run(transmit(air)).await {
            Ok(()) => say!("radio: packet #{n}: sent"),
            Err(Error::DeadlineExceeded) if !ctx.is_cancelled() => {
                // Only this send's deadline: the radio carries on.
                say!(
                    "radio: packet #{n}: deadline passed, TX aborted: {}",
                    Why(send)
                );
            }
            Err(_) => {
                say!("radio: packet #{n}: saw cancel during TX: {}", Why(send));
                return;
            }
        }
        if ctx.sleep(PACKET_GAP).await.is_err() {
            say!("radio: saw cancel between packets: {}", Why(ctx));
            return;
        }
    }
    say!("radio: idle until shutdown");
    ctx.done().await;
    say!("radio: saw cancel while idle: {}", Why(ctx));
}

/// The main task: attaches the static nodes, starts the tasks, cancels the system root
/// when the button is pressed, and waits (at most [`GRACE`]) for the tasks to stop.
pub async fn supervisor(spawner: Spawner) {
    let root = kontext_embassy::root(); // static; deadlines on embassy-time's clock
    let system: &'static Ctx = Pin::static_ref(&SYSTEM).attach(root);
    let sensor_exited = Pin::static_ref(&SENSOR_EXIT).attach(root);
    let radio_exited = Pin::static_ref(&RADIO_EXIT).attach(root);

    say!("supervisor: starting sensor and radio");
    spawner.spawn(sensor(system, &SENSOR_EXIT).expect("sensor task already running"));
    spawner.spawn(radio(system, &RADIO_EXIT).expect("radio task already running"));

    // Simulated button: on hardware, `ExtiInput::wait_for_falling_edge().await` (or an
    // interrupt handler calling `SYSTEM.cancel()`, which is safe from an ISR with the
    // `critical-section` feature).
    Timer::after(ticks(BUTTON_AT)).await;
    let button = ButtonPressed { pin: 13 };
    say!("supervisor: {button} -> cancelling the system root");
    SYSTEM.cancel();
    say!("supervisor: system: {}", Why(system));

    // The grace period: a deadline node pinned here, below the root (not the cancelled
    // system).
    let grace = pin!(DeadlineNode::<1>::new());
    let grace = grace.as_ref().attach_timeout(root, GRACE);
    let stopped = grace
        .run(async {
            sensor_exited.done().await;
            radio_exited.done().await;
        })
        .await;
    match stopped {
        Ok(()) => say!("supervisor: all tasks stopped, halting"),
        Err(_) => say!("supervisor: grace period over: {}", Why(grace)),
    }
}
