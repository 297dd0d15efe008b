//! `ipclink-sidecar ready`: a health check for images without a shell.

use crate::Error;

/// `ipclink-sidecar ready`: asks a running sidecar's `/readyz`.
pub fn ready(listen: std::net::SocketAddr) -> Result<(), Error> {
    use std::io::{Read, Write};
    let io = |what: &str| {
        let what = format!("{what} http://{listen}/readyz");
        move |source| Error::Io { what, source }
    };
    let timeout = std::time::Duration::from_secs(3);
    let mut stream =
        std::net::TcpStream::connect_timeout(&listen, timeout).map_err(io("connect to"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("set up"))?;
    stream
        .write_all(
            format!("GET /readyz HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(io("ask"))?;
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(io("read"))?;
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 200") {
        return Ok(());
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    Err(Error::NotReady(if body.is_empty() {
        text.lines().next().unwrap_or("").to_owned()
    } else {
        body.to_owned()
    }))
}
