//! A minimal embassy-time driver on SysTick, so the example builds without a HAL.
//!
//! A real firmware takes the time driver from its HAL (`embassy-stm32`, `embassy-nrf`,
//! `embassy-rp`: an RTC or timer compare alarm, so the core can sleep between wake-ups).
//! This one interrupts every tick (1 kHz, `embassy-time/tick-hz-1_000`), counts, and wakes
//! the timers that are due from embassy's timer queue. Simple and portable to every
//! Cortex-M (SysTick is part of the core), at the cost of one interrupt per millisecond.

use core::cell::{Cell, RefCell};
use core::task::Waker;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;
use critical_section::Mutex;
use embassy_time_driver::{Driver, TICK_HZ};
use embassy_time_queue_utils::Queue;

/// The core clock SysTick counts (the reset default of many parts is lower: set it to what
/// the clock tree configures).
pub const CORE_HZ: u32 = 64_000_000;

struct SysTickDriver {
    /// Ticks since boot.
    ticks: Mutex<Cell<u64>>,
    /// embassy's timer queue (integrated in the executor's tasks).
    queue: Mutex<RefCell<Queue>>,
}

embassy_time_driver::time_driver_impl!(static DRIVER: SysTickDriver = SysTickDriver {
    ticks: Mutex::new(Cell::new(0)),
    queue: Mutex::new(RefCell::new(Queue::new())),
});

/// Starts SysTick at [`TICK_HZ`]; call once, before the first timer.
pub fn init(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(CORE_HZ / TICK_HZ as u32 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

impl Driver for SysTickDriver {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.ticks.borrow(cs).get())
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        // Due timers are woken by the next tick (at most one tick late, never early).
        critical_section::with(|cs| {
            self.queue.borrow_ref_mut(cs).schedule_wake(at, waker);
        });
    }
}

#[exception]
fn SysTick() {
    critical_section::with(|cs| {
        let ticks = DRIVER.ticks.borrow(cs);
        let now = ticks.get() + 1;
        ticks.set(now);
        // Wakes every timer due by `now`.
        DRIVER.queue.borrow_ref_mut(cs).next_expiration(now);
    });
}
