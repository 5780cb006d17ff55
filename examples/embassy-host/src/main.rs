//! A firmware-style scenario on the host: `embassy-executor` on `platform-std` and
//! embassy-time's `std` driver (real time). The scenario itself is in `scenario.rs`, shared
//! with the firmware example (`../embassy-firmware`).
//!
//! ```sh
//! cargo run --manifest-path examples/embassy-host/Cargo.toml
//! ```
//!
//! It prints a trace and exits on its own after about 1.2 s.

/// Trace output: stdout on the host.
macro_rules! out {
    ($($arg:tt)*) => {
        println!($($arg)*)
    };
}

mod scenario;

#[embassy_executor::main]
async fn main(spawner: embassy_executor::Spawner) {
    scenario::supervisor(spawner).await;
    // The std executor never returns: end the process once the supervisor is done.
    std::process::exit(0);
}
