//! Fetching a bearer token: run a command, read a file, ask the GCE metadata server. Each
//! fetch is bounded (time and bytes) and its errors say what failed without repeating the
//! token (stderr of a failed command is shown, shortened: it is the program's message).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;

use super::CredentialError;

/// Largest token (command stdout, file, metadata answer) accepted.
pub const MAX_TOKEN_BYTES: u64 = 64 * 1024;
/// How much of a failed command's stderr is repeated in the error.
const STDERR_SHOWN: usize = 300;

/// A token and, when its source says so, how long it stays valid.
pub struct Fetched {
    pub token: String,
    pub expires_in: Option<Duration>,
}

/// Run `argv` (no shell) with a timeout; its stdout, trimmed, is the token.
pub async fn run_command(argv: &[String], timeout: Duration) -> Result<String, CredentialError> {
    let program = argv.first().map(String::as_str).unwrap_or_default();
    let fail = |reason: String| CredentialError::Command {
        program: program.to_string(),
        reason,
    };
    let mut child = tokio::process::Command::new(program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(fail("no output pipes".into()));
    };
    let run = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (mut so, mut se) = (
            stdout.take(MAX_TOKEN_BYTES + 1),
            stderr.take(MAX_TOKEN_BYTES),
        );
        let (o, e) = tokio::join!(so.read_to_end(&mut out), se.read_to_end(&mut err));
        o.map_err(|e| fail(format!("reading its output: {e}")))?;
        e.map_err(|e| fail(format!("reading its error output: {e}")))?;
        let status = child
            .wait()
            .await
            .map_err(|e| fail(format!("waiting for it: {e}")))?;
        Ok::<_, CredentialError>((status, out, err))
    };
    let (status, out, err) = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| fail(format!("did not finish within {timeout:?} (auth.timeout)")))??;
    if !status.success() {
        let msg = String::from_utf8_lossy(&err);
        let msg: String = msg.trim().chars().take(STDERR_SHOWN).collect();
        let code = status
            .code()
            .map(|c| format!("exited {c}"))
            .unwrap_or_else(|| "was killed by a signal".into());
        return Err(fail(if msg.is_empty() {
            code
        } else {
            format!("{code}: {msg}")
        }));
    }
    if out.len() as u64 > MAX_TOKEN_BYTES {
        return Err(fail(format!(
            "printed more than {MAX_TOKEN_BYTES} bytes; print only the token"
        )));
    }
    let token = token_text(out).map_err(&fail)?;
    Ok(token)
}

/// A file's modification time and size: when either changes, the file is read again.
pub type FileStamp = (Option<SystemTime>, u64);

/// The file's stamp, without reading it.
pub async fn file_stamp(path: &Path) -> Result<FileStamp, CredentialError> {
    let m = tokio::fs::metadata(path)
        .await
        .map_err(|e| file_error(path, e.to_string()))?;
    Ok((m.modified().ok(), m.len()))
}

/// Read the token file (trimmed), bounded.
pub async fn read_file(path: &Path) -> Result<String, CredentialError> {
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|e| file_error(path, e.to_string()))?;
    let mut out = Vec::new();
    f.take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut out)
        .await
        .map_err(|e| file_error(path, e.to_string()))?;
    if out.len() as u64 > MAX_TOKEN_BYTES {
        return Err(file_error(
            path,
            format!("larger than {MAX_TOKEN_BYTES} bytes; it should hold only the token"),
        ));
    }
    token_text(out).map_err(|r| file_error(path, r))
}

fn file_error(path: &Path, reason: String) -> CredentialError {
    CredentialError::File {
        path: path.display().to_string(),
        reason,
    }
}

/// Ask the metadata server for a token: `{access_token, expires_in}`.
pub async fn gcp_metadata(
    http: &reqwest::Client,
    url: &reqwest::Url,
    timeout: Duration,
) -> Result<Fetched, CredentialError> {
    let fail = |reason: String| CredentialError::Metadata {
        url: url.to_string(),
        reason,
    };
    let resp = http
        .get(url.clone())
        .header("Metadata-Flavor", "Google")
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| fail(crate::errors::error_chain(&e)))?;
    let status = resp.status();
    let body = tokio::time::timeout(
        timeout,
        crate::body::read_capped(resp, MAX_TOKEN_BYTES as usize),
    )
    .await
    .map_err(|_| fail(format!("no answer within {timeout:?}")))?
    .map_err(|e| fail(format!("reading the answer: {e}")))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.trim().chars().take(STDERR_SHOWN).collect();
        return Err(fail(format!("answered {status}: {text}")));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: String,
        expires_in: Option<u64>,
    }
    let a: Answer = serde_json::from_slice(&body)
        .map_err(|e| fail(format!("answer is not {{access_token, expires_in}}: {e}")))?;
    let token = token_text(a.access_token.into_bytes()).map_err(&fail)?;
    Ok(Fetched {
        token,
        expires_in: a.expires_in.map(Duration::from_secs),
    })
}

/// Token bytes → a trimmed, non-empty, header-safe string.
fn token_text(bytes: Vec<u8>) -> Result<String, String> {
    let text = String::from_utf8(bytes).map_err(|_| "the token is not UTF-8 text".to_string())?;
    let token = text.trim();
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    if token.chars().any(|c| c.is_control()) {
        return Err("the token spans several lines or holds control characters".into());
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn command_stdout_is_trimmed_and_failures_name_program_and_stderr() {
        let t = run_command(
            &argv(&["sh", "-c", "printf '  tok-1\\n'"]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(t, "tok-1");
        let e = run_command(
            &argv(&["sh", "-c", "echo 'not logged in' >&2; exit 1"]),
            Duration::from_secs(5),
        )
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("command sh exited 1: not logged in"), "{e}");
        let e = run_command(&argv(&["sh", "-c", "sleep 5"]), Duration::from_millis(200))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("did not finish"), "{e}");
        let e = run_command(&argv(&["/nonexistent/prog"]), Duration::from_secs(5))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot start"), "{e}");
        let e = run_command(&argv(&["sh", "-c", "true"]), Duration::from_secs(5))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[tokio::test]
    async fn file_is_read_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "abc\n").unwrap();
        assert_eq!(read_file(&p).await.unwrap(), "abc");
        std::fs::write(&p, vec![b'a'; MAX_TOKEN_BYTES as usize + 1]).unwrap();
        assert!(read_file(&p).await.is_err());
        assert!(read_file(&dir.path().join("none")).await.is_err());
    }
}
