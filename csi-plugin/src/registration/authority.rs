//! The kubelet's plugin-registration client dials the registration socket by its path,
//! and grpc-go then sends that path as the HTTP/2 `:authority` (Kubernetes 1.34,
//! `pluginmanager/operationexecutor`). h2, under tonic, refuses a `/` in an authority
//! with a stream reset (PROTOCOL_ERROR), so GetInfo never arrives and the driver is never
//! registered. This reader sits between the socket and tonic: it re-encodes each
//! request header block with `:authority: localhost` (what the kubelet's own CSI client
//! sends) and passes every other byte through unchanged. Replies are not touched.
//!
//! Only the client-to-server direction of an HTTP/2 connection is parsed: the
//! 24-byte preface, then frames of a 9-byte header. HEADERS and CONTINUATION frames
//! are joined, decoded (HPACK, with the client's dynamic table), rewritten, re-encoded
//! and sent as one HEADERS frame.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The default SETTINGS_MAX_FRAME_SIZE, which our server does not raise.
const MAX_FRAME: usize = 16_384;
/// The most a request header block may take across HEADERS and CONTINUATION frames
/// (the kubelet's are a few hundred bytes): a peer cannot make this rewriter buffer
/// more than this and one frame.
const MAX_BLOCK: usize = 4 * MAX_FRAME;

/// A connection whose request headers get a valid `:authority`.
pub struct LocalAuthority<S> {
    inner: S,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    preface_done: bool,
    /// A header block being joined from HEADERS + CONTINUATION: (stream, flags, bytes).
    pending: Option<(u32, u8, Vec<u8>)>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    eof: bool,
}

impl<S> std::fmt::Debug for LocalAuthority<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAuthority").finish_non_exhaustive()
    }
}

impl<S> LocalAuthority<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        LocalAuthority {
            inner,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            preface_done: false,
            pending: None,
            decoder: loona_hpack::Decoder::new(),
            encoder: loona_hpack::Encoder::new(),
            eof: false,
        }
    }

    /// Moves every complete unit of `input` to `output`, rewritten.
    fn process(&mut self) -> io::Result<()> {
        if !self.preface_done {
            if self.input.len() < PREFACE.len() {
                return Ok(());
            }
            self.output.extend(self.input.drain(..PREFACE.len()));
            self.preface_done = true;
        }
        while self.input.len() >= 9 {
            let len = usize::from(self.input[0]) << 16
                | usize::from(self.input[1]) << 8
                | usize::from(self.input[2]);
            if len > MAX_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("HTTP/2 frame of {len} bytes, larger than the {MAX_FRAME} allowed"),
                ));
            }
            if self.input.len() < 9 + len {
                break;
            }
            let kind = self.input[3];
            let flags = self.input[4];
            let stream =
                u32::from_be_bytes([self.input[5], self.input[6], self.input[7], self.input[8]])
                    & 0x7fff_ffff;
            let frame: Vec<u8> = self.input.drain(..9 + len).collect();
            let payload = &frame[9..];
            match kind {
                HEADERS => {
                    let mut start = 0;
                    let mut end = payload.len();
                    if flags & PADDED != 0 {
                        let pad = usize::from(*payload.first().ok_or_else(bad)?);
                        start += 1;
                        end = end.checked_sub(pad).ok_or_else(bad)?;
                    }
                    if flags & PRIORITY != 0 {
                        start += 5;
                    }
                    let block = payload.get(start..end).ok_or_else(bad)?.to_vec();
                    self.pending = Some((stream, flags & END_STREAM, block));
                    if flags & END_HEADERS != 0 {
                        self.flush_block()?;
                    }
                }
                CONTINUATION => {
                    let (_, _, block) = self.pending.as_mut().ok_or_else(bad)?;
                    if block.len() + payload.len() > MAX_BLOCK {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("request header block larger than {MAX_BLOCK} bytes"),
                        ));
                    }
                    block.extend_from_slice(payload);
                    if flags & END_HEADERS != 0 {
                        self.flush_block()?;
                    }
                }
                _ => self.output.extend_from_slice(&frame),
            }
        }
        Ok(())
    }

    fn flush_block(&mut self) -> io::Result<()> {
        let (stream, end_stream, block) = self.pending.take().ok_or_else(bad)?;
        let headers = self
            .decoder
            .decode(&block)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("HPACK: {e:?}")))?;
        let rewritten: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(name, value)| {
                if name.as_slice() == b":authority" && !valid_authority(value) {
                    (name.as_slice(), b"localhost".as_slice())
                } else {
                    (name.as_slice(), value.as_slice())
                }
            })
            .collect();
        let encoded = self.encoder.encode(rewritten);
        if encoded.len() > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request header block larger than one frame",
            ));
        }
        let len = encoded.len().to_be_bytes();
        self.output.extend_from_slice(&len[len.len() - 3..]);
        self.output.push(HEADERS);
        self.output.push(END_HEADERS | end_stream);
        self.output.extend_from_slice(&stream.to_be_bytes());
        self.output.extend_from_slice(&encoded);
        Ok(())
    }
}

fn bad() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP/2 frame")
}

/// Whether h2 accepts `value` as an authority: the same parser it uses.
fn valid_authority(value: &[u8]) -> bool {
    tonic::codegen::http::uri::Authority::try_from(value).is_ok()
}

impl<S: AsyncRead + Unpin> AsyncRead for LocalAuthority<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.sent < this.output.len() {
                let n = (this.output.len() - this.sent).min(buf.remaining());
                buf.put_slice(&this.output[this.sent..this.sent + n]);
                this.sent += n;
                if this.sent == this.output.len() {
                    this.output.clear();
                    this.sent = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                // Whatever is left incomplete is passed on for the server to judge.
                this.output.append(&mut this.input);
                continue;
            }
            this.input.extend_from_slice(read.filled());
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LocalAuthority<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> tonic::transport::server::Connected for LocalAuthority<S> {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len().to_be_bytes();
        let mut f = len[len.len() - 3..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    #[tokio::test]
    async fn a_path_authority_becomes_localhost_and_everything_else_passes() {
        let mut client = loona_hpack::Encoder::new();
        let request = |path: &[u8]| {
            vec![
                (b":method".to_vec(), b"POST".to_vec()),
                (b":scheme".to_vec(), b"http".to_vec()),
                (b":path".to_vec(), path.to_vec()),
                (
                    b":authority".to_vec(),
                    b"%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fcsi.ipclink.dev-reg.sock"
                        .to_vec(),
                ),
                (b"content-type".to_vec(), b"application/grpc".to_vec()),
            ]
        };
        let first = request(b"/pluginregistration.Registration/GetInfo");
        let second = request(b"/pluginregistration.Registration/NotifyRegistrationStatus");
        let block1 = client.encode(first.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let block2 = client.encode(second.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let settings = frame(0x4, 0, 0, &[]);
        let data = frame(0x0, END_STREAM, 1, b"\0\0\0\0\0");
        let mut wire = PREFACE.to_vec();
        wire.extend(&settings);
        // The first block split over HEADERS (padded) and CONTINUATION.
        let (a, b) = block1.split_at(block1.len() / 2);
        let mut padded = vec![3u8];
        padded.extend(a);
        padded.extend([0, 0, 0]);
        wire.extend(frame(HEADERS, PADDED, 1, &padded));
        wire.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        wire.extend(&data);
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &block2));

        let mut fixed = LocalAuthority::new(&wire[..]);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.expect("read");

        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let mut rest = &out[PREFACE.len()..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            frames.push(rest[..9 + len].to_vec());
            rest = &rest[9 + len..];
        }
        assert_eq!(frames.len(), 4, "settings, headers, data, headers");
        assert_eq!(frames[0], settings);
        assert_eq!(frames[2], data);
        let mut server = loona_hpack::Decoder::new();
        for (f, want, flags) in [
            (&frames[1], &first, END_HEADERS),
            (&frames[3], &second, END_HEADERS | END_STREAM),
        ] {
            assert_eq!((f[3], f[4]), (HEADERS, flags));
            let got = server.decode(&f[9..]).expect("decode");
            let mut expected = want.clone();
            expected[3].1 = b"localhost".to_vec();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn valid_authorities_are_kept() {
        assert!(valid_authority(b"localhost"));
        assert!(valid_authority(b"127.0.0.1:9000"));
        assert!(!valid_authority(b"/tmp/x.sock"));
        // What grpc-go actually sends for a socket path (Kubernetes 1.34's kubelet).
        assert!(!valid_authority(
            b"%2Ftmp%2Fkubelet%2Fcsi.ipclink.dev-reg.sock"
        ));
        assert!(!valid_authority(b""));
    }

    #[tokio::test]
    async fn what_a_peer_can_make_it_buffer_is_bounded() {
        // A frame announcing 16 MiB is refused from its 9-byte header.
        let mut wire = PREFACE.to_vec();
        wire.extend([0xff, 0xff, 0xff, 0x0, 0x0, 0, 0, 0, 1]);
        wire.extend(vec![0u8; 100_000]);
        let mut fixed = LocalAuthority::new(&wire[..]);
        let mut out = Vec::new();
        let err = fixed.read_to_end(&mut out).await.expect_err("too large");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("larger than the 16384 allowed"),
            "{err}"
        );
        assert!(fixed.input.len() <= 9 + 8192, "{}", fixed.input.len());

        // A header block that never ends is refused once it passes MAX_BLOCK.
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, 0, 1, &[0x82]));
        for _ in 0..10 {
            wire.extend(frame(CONTINUATION, 0, 1, &[0x82; MAX_FRAME]));
        }
        let mut fixed = LocalAuthority::new(&wire[..]);
        let err = fixed
            .read_to_end(&mut Vec::new())
            .await
            .expect_err("endless");
        assert!(
            err.to_string().contains("header block larger than"),
            "{err}"
        );
        let pending = fixed.pending.as_ref().map_or(0, |(_, _, b)| b.len());
        assert!(pending <= MAX_BLOCK, "{pending}");
        assert!(
            fixed.input.len() <= 9 + MAX_FRAME + 8192,
            "{}",
            fixed.input.len()
        );
    }
}
