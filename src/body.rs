//! Bounded reads of HTTP response bodies. Every body hookshim reads from the network (status
//! responses, key sets) is read chunk by chunk and given up as soon as it passes its cap, so an
//! endless or huge body costs at most the cap in memory (invariant 8). The time bound is the
//! caller's: reqwest's per-request `timeout` covers the body too, and callers add their own
//! deadline around the read.

use crate::errors::error_chain;

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("timed out")]
    TimedOut,
    #[error("{0}")]
    Read(String),
}

/// Read `resp`'s body, at most `limit` bytes: a declared `Content-Length` over the cap is refused
/// before reading, a streamed body as soon as it passes the cap.
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge { limit });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf),
            Err(e) if e.is_timeout() => return Err(BodyError::TimedOut),
            Err(e) => return Err(BodyError::Read(error_chain(&e))),
        }
    }
}

/// Loopback servers that misbehave, for tests here and in other modules.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers every request `200` with a chunked body that never ends.
    pub async fn endless_chunked() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = format!("1000\r\n{}\r\n", "x".repeat(0x1000));
                    while sock.write_all(chunk.as_bytes()).await.is_ok() {}
                });
            }
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_endless_body_is_cut_at_the_cap() {
        let addr = testing::endless_chunked().await;
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let resp = http.get(format!("http://{addr}/")).send().await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(10), read_capped(resp, 64 * 1024))
            .await
            .expect("the read ends at the cap");
        assert!(
            matches!(read, Err(BodyError::TooLarge { limit: 65536 })),
            "{read:?}"
        );
    }
}
