//! A Zenoh publisher and subscriber for two pods or containers that share an ipclink
//! link at /dev/shm (docs/zenoh.md). The subscriber listens on a Unix socket in the link,
//! the publisher connects to it, and the payloads travel in shared-memory buffers the
//! publisher allocates in the link (`/dev/shm/*.zenoh`); with `ZENOH_SHM=off` and TCP
//! endpoints the same pair is the baseline over the network.
//!
//!   ipclink-zenoh sub|pub
//!
//! Environment: `ZENOH_LISTEN` / `ZENOH_CONNECT` (endpoints, e.g.
//! `unixsock-stream//dev/shm/zenoh.sock` or `tcp/10.0.0.5:7447`), `ZENOH_SHM` (`on`,
//! the default, or `off`), `ZENOH_SAMPLES` (1..=1,000,000, default 1,000), `ZENOH_SIZE`
//! (bytes a sample, 16..=4 MiB, default 64 KiB), `ZENOH_POOL` (the publisher's
//! shared-memory pool in bytes, at least one sample, at most 64 MiB, default 4 MiB: Zenoh
//! locks its segments in memory, so the pool and Zenoh's own ~1.25 MiB must fit the
//! container's RLIMIT_MEMLOCK on both sides), `ZENOH_TIMEOUT_S` (1..=3600, default
//! 120) and `ZENOH_WAIT_FOR` (a path: once the samples are acknowledged, both wait for
//! it to exist before letting go of their session, socket and pool, so that a test can
//! look at them). Prints one line saying what arrived, and exits 1 when anything is missing, out
//! of order, damaged, or (with shared memory on) not in shared memory.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use zenoh::Wait;
use zenoh::qos::{CongestionControl, Reliability};
use zenoh::shm::{GarbageCollect, PosixShmProviderBackend, ShmProviderBuilder, ZAllocError};

type Error = Box<dyn std::error::Error + Send + Sync>;

const DATA: &str = "ipclink/zenoh/data";
const ACK: &str = "ipclink/zenoh/ack";
const BYE: &str = "ipclink/zenoh/bye";

struct Settings {
    listen: Option<String>,
    connect: Option<String>,
    shm: bool,
    samples: u64,
    size: usize,
    pool: usize,
    timeout: Duration,
    /// A path whose existence both wait for, holding everything, before letting go.
    wait_for: Option<std::path::PathBuf>,
}

/// `name` as a number in `range`, or `default` when unset.
fn number(name: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> Result<u64, Error> {
    let Ok(text) = std::env::var(name) else {
        return Ok(default);
    };
    match text.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "{name}: {text:?} is not a number from {} to {}",
            range.start(),
            range.end()
        )
        .into()),
    }
}

impl Settings {
    fn from_env() -> Result<Settings, Error> {
        let size = number("ZENOH_SIZE", 64 << 10, 16..=4 << 20)? as usize;
        let shm = match std::env::var("ZENOH_SHM").as_deref() {
            Err(_) | Ok("on") => true,
            Ok("off") => false,
            Ok(other) => return Err(format!("ZENOH_SHM: {other:?} is not on or off").into()),
        };
        Ok(Settings {
            listen: std::env::var("ZENOH_LISTEN").ok(),
            connect: std::env::var("ZENOH_CONNECT").ok(),
            shm,
            samples: number("ZENOH_SAMPLES", 1000, 1..=1_000_000)?,
            size,
            pool: number("ZENOH_POOL", 4 << 20, size as u64..=64 << 20)? as usize,
            timeout: Duration::from_secs(number("ZENOH_TIMEOUT_S", 120, 1..=3600)?),
            wait_for: std::env::var_os("ZENOH_WAIT_FOR")
                .filter(|p| !p.is_empty())
                .map(Into::into),
        })
    }

    /// With `ZENOH_WAIT_FOR`, waits (up to the timeout) until that path exists: the
    /// session, the socket and the pool are still held meanwhile, for an observer.
    fn wait_for_release(&self) -> Result<(), Error> {
        let Some(path) = &self.wait_for else {
            return Ok(());
        };
        let deadline = Instant::now() + self.timeout;
        while !path.exists() {
            if Instant::now() > deadline {
                return Err(
                    format!("{} did not appear in {:?}", path.display(), self.timeout).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The socket file a `unixsock-stream/PATH` endpoint to connect to names.
    fn socket_to_connect(&self) -> Option<std::path::PathBuf> {
        let path = self.connect.as_deref()?.strip_prefix("unixsock-stream/")?;
        let path = path.split(['?', '#']).next().unwrap_or(path);
        Some(path.into())
    }

    /// A peer that talks only through the endpoints given: no multicast scouting, and Zenoh's implicit shared-memory pool (16 MiB by default, more than a
    /// container may lock) off; the publisher allocates its own buffers.
    fn config(&self) -> Result<zenoh::Config, Error> {
        let mut c = zenoh::Config::default();
        let set = |c: &mut zenoh::Config, key: &str, value: &str| {
            c.insert_json5(key, value)
                .map_err(|e| format!("zenoh configuration {key} = {value}: {e}"))
        };
        set(&mut c, "mode", r#""peer""#)?;
        set(&mut c, "scouting/multicast/enabled", "false")?;
        let list = |e: &Option<String>| match e {
            Some(e) => format!("[{e:?}]"),
            None => "[]".to_owned(),
        };
        set(&mut c, "listen/endpoints", &list(&self.listen))?;
        set(&mut c, "connect/endpoints", &list(&self.connect))?;
        // Opening waits (retrying) until the endpoint answers, up to the timeout: the
        // publisher may start before the subscriber has made its socket.
        let ms = self.timeout.as_millis().to_string();
        set(&mut c, "connect/timeout_ms", &ms)?;
        set(&mut c, "connect/exit_on_failure", "true")?;
        set(
            &mut c,
            "transport/shared_memory/enabled",
            &self.shm.to_string(),
        )?;
        set(
            &mut c,
            "transport/shared_memory/transport_optimization/enabled",
            "false",
        )?;
        Ok(c)
    }
}

/// The byte that fills sample `seq` after its 8-byte sequence number.
fn pattern(seq: u64) -> u8 {
    (seq as u8).wrapping_mul(31).wrapping_add(7)
}

/// Writes sample `seq` into `buf`: every byte, as a producer writes its frame.
fn fill(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..].fill(pattern(seq));
}

/// Whether `buf` is sample `seq` of `size` bytes: its length, its sequence number, and
/// one byte of every 4 KiB page and the last (reading every byte would measure the
/// check more than the transport).
fn intact(buf: &[u8], seq: u64, size: usize) -> bool {
    buf.len() == size
        && buf[..8] == seq.to_le_bytes()
        && (8..size)
            .step_by(4096)
            .chain([size - 1])
            .all(|i| buf[i] == pattern(seq))
}

/// Opens the session and says where it listens ("nothing" for one that only connects).
///
/// A side that connects to a Unix socket first waits for the socket to exist: the
/// listener makes it once its own session is up. Zenoh, as it opens a session, removes
/// the `*.zenoh` segments in /dev/shm that no process holds, and a segment the other
/// side is making at that moment is not held yet: the two sessions opening at once can
/// remove the segment one of them offers for the shared-memory handshake, and their
/// transport then runs without shared memory (zenoh-shm 1.10's startup clean-up).
fn open(s: &Settings, role: &str) -> Result<zenoh::Session, Error> {
    if let Some(socket) = s.socket_to_connect() {
        let deadline = Instant::now() + s.timeout;
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err(
                    format!("{} did not appear in {:?}", socket.display(), s.timeout).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let session = zenoh::open(s.config()?).wait()?;
    let locators: Vec<String> = session
        .info()
        .locators()
        .wait()
        .iter()
        .map(|l| l.to_string())
        .collect();
    let at = if locators.is_empty() {
        "nothing".to_owned()
    } else {
        locators.join(", ")
    };
    println!("zenoh {role}: listening on {at}");
    Ok(session)
}

fn sub(s: &Settings) -> Result<String, Error> {
    let session = open(s, "sub")?;
    let data = session.declare_subscriber(DATA).wait()?;
    let bye = session.declare_subscriber(BYE).wait()?;
    let deadline = Instant::now() + s.timeout;
    let (mut arrived, mut in_shm) = (0u64, 0u64);
    let mut first = None;
    while arrived < s.samples {
        let Some(sample) = data.recv_deadline(deadline)? else {
            return Err(format!(
                "{arrived} of {} samples arrived in {:?}",
                s.samples, s.timeout
            )
            .into());
        };
        first.get_or_insert_with(Instant::now);
        let payload = sample.payload();
        if payload.as_shm().is_some() {
            in_shm += 1;
        }
        if !intact(&payload.to_bytes(), arrived, s.size) {
            return Err(format!("sample {arrived} is not the one sent, or damaged").into());
        }
        arrived += 1;
    }
    let took = first.map(|f| f.elapsed()).unwrap_or_default();
    session.put(ACK, arrived.to_string()).wait()?;
    s.wait_for_release()?;
    // The publisher says bye once it has the acknowledgement, so that it arrives.
    let said_bye = bye.recv_deadline(Instant::now() + Duration::from_secs(30))?;
    session.close().wait()?;
    if s.shm && in_shm != arrived {
        return Err(format!(
            "{arrived} samples arrived, only {in_shm} in shared memory (is the link at /dev/shm in both?)"
        )
        .into());
    }
    let mb = (arrived as f64 * s.size as f64) / took.as_secs_f64().max(1e-9) / 1e6;
    Ok(format!(
        "zenoh sub: {arrived} samples of {} bytes arrived in order, {in_shm} in shared memory, \
         in {:.3} s ({mb:.0} MB/s){}",
        s.size,
        took.as_secs_f64(),
        if said_bye.is_some() { "" } else { "; no bye" }
    ))
}

/// Sessions the publisher opens at most until its transport to the subscriber has
/// shared memory.
const ATTEMPTS: u32 = 3;

fn publish(s: &Settings) -> Result<String, Error> {
    let deadline = Instant::now() + s.timeout;
    let mut attempt = 1;
    let (session, ack, publisher) = loop {
        let session = open(s, "pub")?;
        let ack = session.declare_subscriber(ACK).wait()?;
        let publisher = session
            .declare_publisher(DATA)
            .reliability(Reliability::Reliable)
            .congestion_control(CongestionControl::Block)
            .wait()?;
        while !publisher.matching_status().wait()?.matching() {
            if Instant::now() > deadline {
                return Err(format!("no subscriber matched in {:?}", s.timeout).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The handshake decides once per transport whether it has shared memory; one
        // that has none carries every sample as a copy. Asked before the first sample,
        // and opened again (a new handshake) when it came out without.
        let shm = session
            .info()
            .transports()
            .wait()
            .any(|t| !t.is_multicast() && t.is_shm());
        if !s.shm || shm {
            break (session, ack, publisher);
        }
        if attempt == ATTEMPTS {
            return Err(format!(
                "the transport to the subscriber came without shared memory {ATTEMPTS} times (RUST_LOG=zenoh_transport=trace says why)"
            )
            .into());
        }
        println!("zenoh pub: the transport came without shared memory; connecting again");
        drop(publisher);
        drop(ack);
        session.close().wait()?;
        attempt += 1;
    };
    // The pool lives until the subscriber has acknowledged every sample: dropped, it
    // unlinks its segment, and a subscriber that had not opened it yet drops the samples
    // still on their way (Zenoh logs that at debug level only).
    let mut pool = None;
    if s.shm {
        let backend = PosixShmProviderBackend::builder(s.pool).wait()?;
        let provider = pool.insert(ShmProviderBuilder::backend(backend).wait());
        let layout = provider.alloc_layout(s.size)?;
        for seq in 0..s.samples {
            // As Zenoh's BlockOn policy (retry every millisecond while the pool is full),
            // up to the deadline: a subscriber that lets no buffer go stops the run.
            let mut buf = loop {
                match layout.alloc().with_policy::<GarbageCollect>().wait() {
                    Ok(buf) => break buf,
                    Err(ZAllocError::OutOfMemory | ZAllocError::NeedDefragment)
                        if Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => {
                        return Err(format!(
                            "no shared memory for sample {seq} in {:?} (the subscriber holds the pool): {e:?}",
                            s.timeout
                        )
                        .into());
                    }
                }
            };
            fill(&mut buf, seq);
            publisher.put(buf).wait()?;
        }
    } else {
        let mut buf = vec![0u8; s.size];
        for seq in 0..s.samples {
            fill(&mut buf, seq);
            publisher.put(buf.clone()).wait()?;
        }
    }
    let Some(reply) = ack.recv_deadline(deadline)? else {
        return Err(format!("the subscriber acknowledged nothing in {:?}", s.timeout).into());
    };
    let acknowledged = String::from_utf8_lossy(&reply.payload().to_bytes()).into_owned();
    s.wait_for_release()?;
    session.put(BYE, "bye").wait()?;
    session.close().wait()?;
    drop(pool);
    Ok(format!(
        "zenoh pub: {} samples of {} bytes sent ({}), the subscriber acknowledged {}",
        s.samples,
        s.size,
        if s.shm { "shared memory" } else { "copied" },
        acknowledged.escape_debug()
    ))
}

fn main() -> ExitCode {
    // Zenoh's own log, when RUST_LOG asks for it: a sample the subscriber cannot map is
    // dropped with a line at debug level there (`RUST_LOG=zenoh_transport=debug`).
    zenoh::try_init_log_from_env();
    let role = std::env::args().nth(1).unwrap_or_default();
    let result = Settings::from_env().and_then(|s| match role.as_str() {
        "sub" => sub(&s),
        "pub" => publish(&s),
        _ => Err("usage: ipclink-zenoh sub|pub".into()),
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!(
                "zenoh {}: {}",
                role.escape_debug(),
                e.to_string().escape_debug()
            );
            ExitCode::FAILURE
        }
    }
}
