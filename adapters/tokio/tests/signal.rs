//! `shutdown::cancel_on_signal` in a child process: the first SIGTERM cancels the root
//! with the signal as its cause; a second one during the drain ends the process.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kontext_tokio::shutdown;

const CHILD: &str = "KONTEXT_SIGNAL_TEST_CHILD";

/// The child: cancel on signal, report the cause, then drain for far longer than the
/// parent waits.
fn child() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (root, stop) = kontext_tokio::background().child();
        let _listener = shutdown::cancel_on_signal(stop);
        // Let the listener task install its handlers before saying so.
        tokio::time::sleep(Duration::from_millis(200)).await;
        println!("ready");
        std::io::stdout().flush().unwrap();
        if tokio::time::timeout(Duration::from_secs(5), root.cancelled())
            .await
            .is_err()
        {
            std::process::exit(3);
        }
        println!("cancelled: {}", root.cause().unwrap());
        std::io::stdout().flush().unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await; // a long drain
        std::process::exit(0);
    });
}

fn term(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn a_second_sigterm_during_the_drain_ends_the_process() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_second_sigterm_during_the_drain_ends_the_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = proc.id();
    let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
    let mut next_line = |want: &str| loop {
        let line = lines.next().expect("child output ended").unwrap();
        if line.contains(want) {
            return line;
        }
    };
    next_line("ready");
    term(pid);
    let cancelled = next_line("cancelled");
    assert!(cancelled.contains("SIGTERM"), "{cancelled}");
    term(pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = proc.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = proc.kill();
            panic!("the second SIGTERM did not end the process within 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(143), "{status:?}");
}
