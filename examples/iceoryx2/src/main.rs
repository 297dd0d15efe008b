//! `ipclink-iceoryx2 ping N [SIZE] | pong N [SIZE]`: two processes exchange N samples of
//! SIZE bytes (default 8, at least 8) over iceoryx2 publish/subscribe (zero-copy shared
//! memory), each in its own pod or container, meeting in an ipclink link mounted at
//! `/dev/shm` with `allowCreate: true`.
//!
//! iceoryx2 makes its segments with `shm_open` in `/dev/shm` and keeps its other files
//! under `global.root-path` (default `/tmp/iceoryx2/`, private to each pod): the root path
//! is set inside the link (`$IOX2_ROOT_PATH`, default `/dev/shm/iceoryx2/`), so every
//! file of both sides lives in the link. `ping` publishes samples numbered 1..=N (the
//! number in the first 8 bytes) on `ipclink/ping` and waits for each to come back on
//! `ipclink/pong`; `pong` writes each into a sample of its own and sends it back. Both
//! poll (no sleeping), so the round trip is what shared memory gives. `ping` prints the
//! median and 99th percentile round trip in nanoseconds.

use std::time::{Duration, Instant};

use iceoryx2::prelude::*;

/// How long either side waits for the other before giving up.
const PATIENCE: Duration = Duration::from_secs(120);

fn config() -> Result<Config, Box<dyn std::error::Error>> {
    let root = std::env::var("IOX2_ROOT_PATH").unwrap_or_else(|_| "/dev/shm/iceoryx2/".into());
    let mut config = Config::default();
    config.global.set_root_path(&Path::new(root.as_bytes())?);
    Ok(config)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (role, n, size) = match args.as_slice() {
        [_, role, n] => (role.as_str(), n.parse::<u64>()?, 8),
        [_, role, n, size] => (role.as_str(), n.parse::<u64>()?, size.parse::<usize>()?),
        _ => return Err("usage: ipclink-iceoryx2 ping|pong N [SIZE]".into()),
    };
    if size < 8 {
        return Err(
            format!("SIZE {size}: a sample carries its number in 8 bytes; use 8 or more").into(),
        );
    }
    set_log_level(LogLevel::Warn);
    let node = NodeBuilder::new()
        .config(&config()?)
        .create::<ipc::Service>()?;
    let ping = node
        .service_builder(&"ipclink/ping".try_into()?)
        .publish_subscribe::<[u8]>()
        .open_or_create()?;
    let pong = node
        .service_builder(&"ipclink/pong".try_into()?)
        .publish_subscribe::<[u8]>()
        .open_or_create()?;
    // A sample of SIZE bytes numbered `i`, or the same bytes as `echo`.
    type Out = iceoryx2::port::publisher::Publisher<ipc::Service, [u8], ()>;
    let send = |out: &Out, i: u64, echo: Option<&[u8]>| -> Result<(), Box<dyn std::error::Error>> {
        let sample = out.loan_slice_uninit(size)?;
        let sample = match echo {
            Some(bytes) => sample.write_from_slice(bytes),
            None => {
                let number = i.to_le_bytes();
                sample.write_from_fn(|k| number.get(k).copied().unwrap_or(0))
            }
        };
        sample.send()?;
        Ok(())
    };
    let number = |bytes: &[u8]| u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    match role {
        "ping" => {
            let out = ping
                .publisher_builder()
                .initial_max_slice_len(size)
                .create()?;
            let back = pong.subscriber_builder().create()?;
            let mut rtt = Vec::with_capacity(n as usize);
            let deadline = Instant::now() + PATIENCE;
            for i in 1..=n {
                let sent = Instant::now();
                send(&out, i, None)?;
                let mut resent = sent;
                loop {
                    if let Some(s) = back.receive()?
                        && s.payload().len() == size
                        && number(s.payload()) == i
                    {
                        break;
                    }
                    // The other side may not be subscribed yet: say it again now and then.
                    if resent.elapsed() > Duration::from_millis(5) {
                        send(&out, i, None)?;
                        resent = Instant::now();
                    }
                    if Instant::now() > deadline {
                        return Err(format!("no echo of {i} within {PATIENCE:?}").into());
                    }
                    std::hint::spin_loop();
                }
                rtt.push(sent.elapsed().as_nanos() as u64);
            }
            // The first exchanges include the other side's start.
            let mut steady = rtt.split_off((n as usize / 10).min(rtt.len()));
            steady.sort_unstable();
            let pct = |p: f64| {
                steady
                    .get(((steady.len() as f64 * p) as usize).min(steady.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or(0)
            };
            println!(
                "ping ok {n} rtt_p50_ns {} rtt_p99_ns {}",
                pct(0.5),
                pct(0.99)
            );
        }
        "pong" => {
            let back = pong
                .publisher_builder()
                .initial_max_slice_len(size)
                .create()?;
            let input = ping.subscriber_builder().create()?;
            let deadline = Instant::now() + PATIENCE;
            let mut last = 0;
            while last < n {
                if let Some(s) = input.receive()?
                    && s.payload().len() == size
                {
                    last = last.max(number(s.payload()));
                    send(&back, 0, Some(s.payload()))?;
                } else if Instant::now() > deadline {
                    return Err(format!("only {last} of {n} pings within {PATIENCE:?}").into());
                } else {
                    std::hint::spin_loop();
                }
            }
            // Let the last echo be read before the publisher goes away.
            std::thread::sleep(Duration::from_millis(200));
            println!("pong ok {n}");
        }
        other => return Err(format!("unknown role {other:?}; use ping or pong").into()),
    }
    Ok(())
}
