//! `ipclink-queue`: make, use and look at ipclink queues from a shell, and the peers of
//! the crash test.
//!
//! ```text
//! ipclink-queue create PATH CAPACITY MESSAGE_SIZE   a new queue file, mode 0600
//! ipclink-queue send PATH [PRIORITY] MESSAGE        waits while the queue is full
//! ipclink-queue recv PATH [TIMEOUT_MS]              prints the message, escaped
//! ipclink-queue stat PATH                           what an observer sees
//! ipclink-queue pump-send PATH NAME [COUNT]         "M MEMBER", then until stdin closes (or COUNT
//!                                                   sends): "I NAME:N", send, "S NAME:N"
//! ipclink-queue pump-recv PATH                      "M MEMBER", then "R ID SEQ" per message
//!                                                   (before its receive commits), until stdin closes
//! ```
//! Exit 0, 1 on an error of the queue (its errno named), 2 on bad arguments.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipclink_queue::{Params, Queue, create, stats};

fn usage() -> ExitCode {
    eprintln!(
        "usage: ipclink-queue create PATH CAPACITY MESSAGE_SIZE | send PATH [PRIORITY] MESSAGE | recv PATH [TIMEOUT_MS] | stat PATH | pump-send PATH NAME [COUNT] | pump-recv PATH"
    );
    ExitCode::from(2)
}

fn number(s: &str, what: &str) -> Result<u32, ExitCode> {
    s.parse().map_err(|_| {
        eprintln!("ipclink-queue: {what} {s:?} is not a number");
        ExitCode::from(2)
    })
}

/// One line to stdout in one write(2): a peer killed at any point leaves whole lines.
fn line(text: String) {
    let _ = nix::unistd::write(std::io::stdout(), format!("{text}\n").as_bytes());
}

/// Set once stdin reaches its end (the test closes it to stop a pump).
fn stdin_closed() -> Arc<AtomicBool> {
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
        flag.store(true, Ordering::SeqCst);
    });
    closed
}

fn run(args: &[String]) -> Result<(), ExitCode> {
    let fail = |e: std::io::Error| {
        eprintln!("ipclink-queue: {e}");
        ExitCode::from(1)
    };
    let path = Path::new(args.get(1).ok_or_else(usage)?);
    match (args[0].as_str(), args.len()) {
        ("create", 4) => {
            let params = Params {
                capacity: number(&args[2], "CAPACITY")?,
                message_size: number(&args[3], "MESSAGE_SIZE")?,
            };
            create(path, params, 0o600).map(drop).map_err(fail)
        }
        ("send", 3 | 4) => {
            let q = Queue::open(path).map_err(fail)?;
            let prio = if args.len() == 4 {
                number(&args[2], "PRIORITY")?
            } else {
                0
            };
            q.send(args[args.len() - 1].as_bytes(), prio, None)
                .map_err(fail)
        }
        ("recv", 2 | 3) => {
            let q = Queue::open(path).map_err(fail)?;
            let deadline = match args.get(2) {
                Some(ms) => Some(
                    Instant::now() + Duration::from_millis(u64::from(number(ms, "TIMEOUT_MS")?)),
                ),
                None => None,
            };
            let mut buf = vec![0u8; q.params().message_size as usize];
            let got = q.recv(&mut buf, deadline).map_err(fail)?;
            line(format!(
                "{} (priority {})",
                buf[..got.len].escape_ascii(),
                got.priority
            ));
            Ok(())
        }
        ("stat", 2) => {
            let file = std::fs::File::open(path).map_err(fail)?;
            let s = stats::read(&file).map_err(fail)?;
            line(format!("{s:?}, members: {}", stats::members(&file)));
            Ok(())
        }
        ("pump-send", 3 | 4) => {
            let count = match args.get(3) {
                Some(c) => u64::from(number(c, "COUNT")?),
                None => u64::MAX,
            };
            let q = Queue::open(path).map_err(fail)?;
            line(format!("M {}", q.member()));
            let closed = stdin_closed();
            let mut n = 0u64;
            while !closed.load(Ordering::SeqCst) {
                if n == count {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let id = format!("{}:{n}", args[2]);
                line(format!("I {id}"));
                loop {
                    match q.send(
                        id.as_bytes(),
                        (n % 4) as u32,
                        Some(Instant::now() + Duration::from_millis(100)),
                    ) {
                        Ok(()) => break,
                        Err(e) if e.raw_os_error() == Some(nix::libc::ETIMEDOUT) => {
                            if closed.load(Ordering::SeqCst) {
                                return Ok(());
                            }
                        }
                        Err(e) => return Err(fail(e)),
                    }
                }
                line(format!("S {id}"));
                n += 1;
            }
            Ok(())
        }
        ("pump-recv", 2) => {
            let q = Queue::open(path).map_err(fail)?;
            line(format!("M {}", q.member()));
            let closed = stdin_closed();
            loop {
                let deadline = Some(Instant::now() + Duration::from_millis(100));
                match q.recv_in_place(deadline, |bytes, r| {
                    line(format!("R {} {}", bytes.escape_ascii(), r.seq));
                }) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::ETIMEDOUT) => {
                        if closed.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(fail(e)),
                }
            }
        }
        _ => Err(usage()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        return usage();
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
