//! kontext-embassy's firmware-style scenario as a Cortex-M firmware: the same `scenario.rs` as the
//! host example (`../embassy-host`), on `embassy-executor` `platform-cortex-m`.
//!
//! ```sh
//! cargo build --release --manifest-path examples/embassy-firmware/Cargo.toml --target thumbv7em-none-eabihf
//! cargo build --release --manifest-path examples/embassy-firmware/Cargo.toml --target thumbv6m-none-eabi
//! ```
//!
//! No heap: no global allocator, kontext-embassy without `alloc`. The contexts are static
//! nodes and nodes pinned in the tasks' futures (see `scenario.rs`); `sizes` checks their
//! RAM at compile time. Only builds are checked (no board, no emulator here); the trace goes to [`Trace`], a
//! stand-in for RTT / defmt / a UART.

#![no_std]
#![no_main]

use panic_halt as _;

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
mod sizes;
mod time_driver;

#[embassy_executor::main]
async fn main(spawner: embassy_executor::Spawner) {
    let core = cortex_m::Peripherals::take().expect("core peripherals taken once");
    time_driver::init(core.SYST);
    scenario::supervisor(spawner).await;
    // Returning ends the main task; the executor then sleeps (WFE) with nothing to run.
}
