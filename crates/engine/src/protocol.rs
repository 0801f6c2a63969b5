//! The control channel between the engine and a runtime shim: length-prefixed JSON frames over
//! a Unix socket (4-byte big-endian length, then the JSON bytes).
//!
//! ```text
//! shim   -> engine   {"ready": true}                                    once, at start
//! engine -> shim     {"request_id", "event", "context", "time_limit_ms"} per invocation
//! shim   -> engine   {"ok": true, "ret_msg": "<json>"}
//!                  | {"ok": false, "status_code": 430, "err_msg": "<json>"}
//! ```
//!
//! [`FrameReader`] keeps partial frames in its own buffer, so waiting for a frame can be
//! abandoned (in a `select!`) and resumed without losing bytes.

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use crate::EngineError;

/// Largest frame the engine accepts from a shim. Replies beyond SCF's 6 MB response limit are
/// still read up to here so the caller can be told the response was too large.
pub(crate) const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

const HEADER_BYTES: usize = 4;

/// Encodes `message` as one frame.
pub(crate) fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, EngineError> {
    let payload = serde_json::to_vec(message).map_err(EngineError::MalformedFrame)?;
    let length =
        u32::try_from(payload.len()).map_err(|_| EngineError::FrameTooLarge(payload.len()))?;
    let mut frame = Vec::with_capacity(HEADER_BYTES + payload.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// One invocation, engine to shim.
#[derive(Debug, Serialize)]
pub(crate) struct EventFrame<'a> {
    pub(crate) request_id: &'a str,
    /// The event's JSON text; the shim parses it.
    pub(crate) event: &'a str,
    pub(crate) context: &'a serde_json::Value,
    pub(crate) time_limit_ms: u128,
}

/// The shim's first frame: `{"ready": true}` once the handler is loaded, or, from a spare
/// (see `spare.rs`), `{"spare": true}` while it waits for a function.
#[derive(Debug, Deserialize)]
pub(crate) struct Hello {
    #[serde(default)]
    pub(crate) ready: bool,
    #[serde(default)]
    pub(crate) spare: bool,
}

/// Which first frame an instance being started must send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Greeting {
    /// `{"ready": true}`: a function's instance.
    Ready,
    /// `{"spare": true}`: a spare, waiting for a function.
    Spare,
}

/// The shim's answer to an [`EventFrame`].
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) ok: bool,
    #[serde(default)]
    pub(crate) ret_msg: Option<String>,
    #[serde(default)]
    pub(crate) status_code: Option<u16>,
    #[serde(default)]
    pub(crate) err_msg: Option<String>,
}

/// Reassembles frames from a stream.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// The next frame's payload, or `None` at end of stream (a partial frame at the end counts as
    /// end of stream). Cancel-safe: no bytes are lost if the future is dropped.
    pub(crate) async fn next(
        &mut self,
        stream: &mut UnixStream,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Some(frame));
            }
            self.buf.reserve(64 * 1024);
            let read = stream.read_buf(&mut self.buf).await;
            if read.map_err(EngineError::Control)? == 0 {
                return Ok(None);
            }
        }
    }

    fn take_frame(&mut self) -> Result<Option<Vec<u8>>, EngineError> {
        let Some(header) = self.buf.first_chunk::<HEADER_BYTES>() else {
            return Ok(None);
        };
        let length = u32::from_be_bytes(*header) as usize;
        if length > MAX_FRAME_BYTES {
            return Err(EngineError::FrameTooLarge(length));
        }
        if self.buf.len() < HEADER_BYTES + length {
            return Ok(None);
        }
        let frame = self.buf[HEADER_BYTES..HEADER_BYTES + length].to_vec();
        self.buf.drain(..HEADER_BYTES + length);
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_frames_split_and_joined() {
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        let one = encode(&serde_json::json!({"ready": true})).expect("encode");
        let two = encode(&serde_json::json!({"ok": true, "ret_msg": "1"})).expect("encode");
        let mut joined = one.clone();
        joined.extend_from_slice(&two);
        a.write_all(&joined[..3]).await.expect("write");
        a.write_all(&joined[3..]).await.expect("write");
        drop(a);

        let mut reader = FrameReader::default();
        let first = reader.next(&mut b).await.expect("read").expect("frame");
        let hello: Hello = serde_json::from_slice(&first).expect("hello");
        assert!(hello.ready);
        let second = reader.next(&mut b).await.expect("read").expect("frame");
        let reply: Reply = serde_json::from_slice(&second).expect("reply");
        assert_eq!(reply.ret_msg.as_deref(), Some("1"));
        assert!(reader.next(&mut b).await.expect("read").is_none());
    }

    #[tokio::test]
    async fn rejects_oversized_frame() {
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        let length = u32::try_from(MAX_FRAME_BYTES + 1).expect("fits");
        a.write_all(&length.to_be_bytes()).await.expect("write");
        let mut reader = FrameReader::default();
        let err = reader.next(&mut b).await;
        assert!(matches!(err, Err(EngineError::FrameTooLarge(_))));
    }
}
