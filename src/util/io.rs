//! Socket reads and writes with deadlines, for the RTMP server and the push client.
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Writes with a deadline: a peer that stops reading for `limit` is an error.
pub async fn write_timeout<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    tokio::time::timeout(limit, w.write_all(bytes))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("send stalled for {limit:?}")))?
}

pub async fn read_timeout<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8], limit: Duration) -> std::io::Result<usize> {
    let n = tokio::time::timeout(limit, r.read(buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no data for {limit:?}")))??;
    if n == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed by peer"));
    }
    Ok(n)
}
