//! Issue 6's firmware-style scenario as a Cortex-M firmware: the same `scenario.rs` as the
//! host example (`../embassy-host`), on `embassy-executor` `platform-cortex-m`.
//!
//! ```sh
//! cargo build --release --manifest-path examples/embassy-firmware/Cargo.toml --target thumbv7em-none-eabihf
//! cargo build --release --manifest-path examples/embassy-firmware/Cargo.toml --target thumbv6m-none-eabi
//! ```
//!
//! Heap API for now: kontext's contexts are heap nodes, so the firmware has a global
//! allocator (`embedded-alloc`, [`HEAP_SIZE`] bytes). With kontext's static and pinned nodes
//! (issue 6, next step) the allocator goes away; see the `heap API:` notes in `scenario.rs`.
//! Only builds are checked (no board, no emulator here); the trace goes to [`Trace`], a
//! stand-in for RTT / defmt / a UART.

#![no_std]
#![no_main]

use embedded_alloc::LlffHeap as Heap;
use panic_halt as _;

/// The global allocator for kontext's heap nodes (heap API: goes away with static and
/// pinned nodes).
#[global_allocator]
static HEAP: Heap = Heap::empty();

/// Bytes of RAM for the heap: this scenario needs a few hundred (a node is tens of bytes).
const HEAP_SIZE: usize = 4096;

/// Where the trace goes: nowhere here. Replace with RTT (`rtt-target`), `defmt` or a UART.
struct Trace;

impl core::fmt::Write for Trace {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        core::hint::black_box(s);
        Ok(())
    }
}

/// The scenario's trace output (see [`Trace`]).
macro_rules! out {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::Trace, $($arg)*);
    }};
}

#[path = "../../embassy-host/src/scenario.rs"]
mod scenario;
mod time_driver;

#[embassy_executor::main]
async fn main(spawner: embassy_executor::Spawner) {
    // SAFETY: once, before the first allocation (no context exists yet).
    unsafe {
        embedded_alloc::init!(HEAP, HEAP_SIZE);
    }
    let core = cortex_m::Peripherals::take().expect("core peripherals taken once");
    time_driver::init(core.SYST);
    scenario::supervisor(spawner).await;
    // Returning ends the main task; the executor then sleeps (WFE) with nothing to run.
}
