//! The metrics endpoint's header-read timeout and connection cap, with short limits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use ipclink_runtime::http::{Limits, serve};

fn start(
    limits: Limits,
) -> (
    u16,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            port_tx
                .send(listener.local_addr().expect("addr").port())
                .expect("send port");
            let app = Router::new().route("/", get(|| async { "hi" }));
            serve(listener, app, limits, async {
                let _ = stop_rx.await;
            })
            .await
            .expect("serve");
        });
    });
    (port_rx.recv().expect("port"), stop_tx, handle)
}

#[test]
fn a_client_that_never_sends_its_request_head_is_disconnected() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (port, stop, handle) = start(limits);
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .expect("partial head");
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf); // the server closes the connection
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "not closed by the header timeout"
    );
    assert!(!String::from_utf8_lossy(&buf).contains("hi"));
    let _ = stop.send(());
    handle.join().expect("server thread");
}

#[test]
fn connections_beyond_the_cap_wait_until_one_is_free() {
    let limits = Limits {
        max_connections: 1,
        header_read_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let (port, stop, handle) = start(limits);
    // The first connection holds the only slot (idle, its head not yet sent).
    let mut first = TcpStream::connect(("127.0.0.1", port)).expect("first");
    std::thread::sleep(Duration::from_millis(200));
    let mut second = TcpStream::connect(("127.0.0.1", port)).expect("second (kernel backlog)");
    second
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    second
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .expect("second request");
    let mut buf = [0u8; 64];
    let waited = second.read(&mut buf);
    assert!(waited.is_err(), "served beyond the cap: {waited:?}");
    // Once the first finishes, the second is served.
    first
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .expect("first request");
    let mut text = String::new();
    first.read_to_string(&mut text).expect("first response");
    assert!(text.ends_with("hi"), "{text}");
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut text = String::new();
    second.read_to_string(&mut text).expect("second response");
    assert!(text.ends_with("hi"), "{text}");
    let _ = stop.send(());
    handle.join().expect("server thread");
}

/// A request head is read into a buffer of `max_head_bytes` (32 KiB by default; one
/// read may fill up to twice that): one that fits is answered, one of 100 KiB gets 431
/// (or the connection closes) and is not read further; the server goes on serving.
#[test]
fn a_request_head_over_the_limit_is_refused_unread() {
    let (port, stop, handle) = start(Limits::default());
    let ask = |header_bytes: usize| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let head = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Filler: {}\r\n\r\n",
            "a".repeat(header_bytes)
        );
        let _ = s.write_all(head.as_bytes());
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let fits = ask(16 << 10);
    assert!(fits.starts_with("HTTP/1.1 200"), "{fits}");
    let over = ask(100 << 10);
    assert!(
        over.starts_with("HTTP/1.1 431") || over.is_empty(),
        "{over}"
    );
    assert!(ask(100).starts_with("HTTP/1.1 200"), "still serving");
    let _ = stop.send(());
    handle.join().expect("server thread");
}
