//! The checks the fuzz targets run (`fuzz/fuzz_targets/*.rs`), one function per target, each
//! taking the fuzzer's raw bytes. They live here so that `cargo test` (`tests/it/corpus.rs`)
//! feeds every committed corpus input (`fuzz/corpus/<target>/`) through the same code on the
//! stable toolchain, without cargo-fuzz. Each function panics only when a property is broken:
//! a panic inside hookshim's code, or an assertion here.
//!
//! Inputs are split into fields at `0xFF` bytes ([`fields`]); a byte that never occurs in UTF-8
//! text, so text fields stay intact.

use std::sync::OnceLock;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::clock::Timestamp;
use crate::config::Config;
use crate::schedule::policy::parse_hint;
use crate::signing::{
    StandardKey, github_signature, sign_v1, verify_github, verify_standard_keys, verify_stripe,
};
use crate::upstream::{
    Mapping, MappingInput, PRESETS, UpstreamConfig, prepare_operation, status_url,
    validate_operation_id,
};

/// The field separator of fuzz inputs.
pub const SEP: u8 = 0xFF;

/// One target's check of one input: panics when a property is broken.
pub type Check = fn(&[u8]);

/// The fuzz targets, by name (each is a function here and a directory of `fuzz/corpus/`).
pub const TARGETS: &[(&str, Check)] = &[
    ("signature_headers", signature_headers),
    ("status_mapping", status_mapping),
    ("hints", hints),
    ("operation_ids", operation_ids),
    ("config", config),
];

/// `data` split at [`SEP`]; field `i` of an input with fewer fields is empty.
pub fn fields(data: &[u8]) -> Vec<&[u8]> {
    data.split(|b| *b == SEP).collect()
}

fn field<'a>(f: &[&'a [u8]], i: usize) -> &'a [u8] {
    f.get(i).copied().unwrap_or_default()
}

/// Fixed "now" of the signature checks when the input does not ask for its own timestamp.
const NOW_SECS: u64 = 1_700_000_000;

/// Fields: `flags`, `id`, `timestamp`, `webhook-signature`, `X-Hub-Signature-256`,
/// `Stripe-Signature`, `body`, `key`. Flags: bit 0 — "now" is the input's timestamp (so the
/// signature checks are reached); bit 1 — the `svix-*` spelling. Every scheme verifies the
/// headers (never panics); then our own signatures over (`id`, now, `body`) with `key` must
/// verify: `v1`, `v1a` (Ed25519 key from `key`), GitHub and Stripe.
pub fn signature_headers(data: &[u8]) {
    let f = fields(data);
    let flags = field(&f, 0).first().copied().unwrap_or(0);
    let (id, ts, sig) = (field(&f, 1), field(&f, 2), field(&f, 3));
    let (github, stripe, body, key) = (field(&f, 4), field(&f, 5), field(&f, 6), field(&f, 7));
    let now = if flags & 1 == 1 {
        std::str::from_utf8(ts)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(NOW_SECS)
    } else {
        NOW_SECS
    };
    let names: [&'static str; 3] = if flags & 2 == 2 {
        ["svix-id", "svix-timestamp", "svix-signature"]
    } else {
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
    };
    let mut h = HeaderMap::new();
    for (name, value) in names
        .into_iter()
        .chain(["x-hub-signature-256", "stripe-signature"])
        .zip([id, ts, sig, github, stripe])
    {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            h.insert(name, v);
        }
    }
    let ed = ed25519_dalek::SigningKey::from_bytes(&seed(key));
    let public = ed.verifying_key();
    let keys = [StandardKey::V1(key), StandardKey::V1a(&public)];
    let _ = verify_standard_keys(&keys, &h, body, now);
    let _ = verify_standard_keys(&[], &h, body, now);
    let _ = verify_github(&[key], &h, body);
    let _ = verify_stripe(&[key], &h, body, now);

    // Round trips: what we sign verifies. The id must be a header value we can read back.
    let id = String::from_utf8_lossy(id).into_owned();
    let Ok(id_value) = HeaderValue::from_str(&id) else {
        return;
    };
    if id_value.to_str().is_err() || id.len() > crate::signing::MAX_SIGNATURE_HEADER {
        return;
    }
    let signed = |sig: String| {
        let mut h = HeaderMap::new();
        h.insert(names[0], id_value.clone());
        h.insert(names[1], HeaderValue::from(now));
        match HeaderValue::from_str(&sig) {
            Ok(v) => h.insert(names[2], v),
            Err(e) => panic!("our signature {sig:?} is not a header value: {e}"),
        };
        h
    };
    let v1 = signed(format!("v1,{}", sign_v1(key, &id, now, body)));
    assert_eq!(
        verify_standard_keys(&[StandardKey::V1(key)], &v1, body, now).as_deref(),
        Ok(id.as_str()),
        "a v1 signature we made does not verify"
    );
    let msg = [id.as_bytes(), b".", now.to_string().as_bytes(), b".", body].concat();
    let v1a = {
        use base64::Engine;
        use ed25519_dalek::Signer;
        let s = base64::engine::general_purpose::STANDARD.encode(ed.sign(&msg).to_bytes());
        signed(format!("v1a,{s}"))
    };
    assert_eq!(
        verify_standard_keys(&[StandardKey::V1a(&public)], &v1a, body, now).as_deref(),
        Ok(id.as_str()),
        "a v1a signature we made does not verify"
    );

    let mut gh = HeaderMap::new();
    gh.insert(
        "x-hub-signature-256",
        HeaderValue::from_str(&github_signature(key, body))
            .unwrap_or_else(|e| panic!("our GitHub signature is not a header value: {e}")),
    );
    assert_eq!(
        verify_github(&[key], &gh, body),
        Ok(()),
        "a GitHub signature we made does not verify"
    );

    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(now.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    let stripe = format!("t={now},v1={}", hex::encode(m.finalize().into_bytes()));
    let mut st = HeaderMap::new();
    st.insert(
        "stripe-signature",
        HeaderValue::from_str(&stripe)
            .unwrap_or_else(|e| panic!("our Stripe signature is not a header value: {e}")),
    );
    assert_eq!(
        verify_stripe(&[key], &st, body, now),
        Ok(()),
        "a Stripe signature we made does not verify"
    );
}

/// An Ed25519 seed from any bytes (zero-padded or cut to 32).
fn seed(key: &[u8]) -> [u8; 32] {
    let mut s = [0u8; 32];
    for (d, b) in s.iter_mut().zip(key) {
        *d = *b;
    }
    s
}

/// Every preset's mapping as it is by default and with every override set, and a generic
/// mapping with pointers.
fn mappings() -> &'static [Mapping] {
    static MAPPINGS: OnceLock<Vec<Mapping>> = OnceLock::new();
    MAPPINGS.get_or_init(|| {
        let overrides = || MappingInput {
            result_field: Some("/output/0".into()),
            error_field: Some("/error/message".into()),
            progress_field: Some("/metadata/progress".into()),
            ..Default::default()
        };
        let generic = || MappingInput {
            status_field: Some("/status".into()),
            pending: Some(vec!["queued".into()]),
            succeeded: Some(vec!["done".into(), "succeeded".into()]),
            failed: Some(vec!["error".into(), "failed".into()]),
            cancelled: Some(vec!["cancelled".into()]),
            expired: Some(vec!["expired".into()]),
            ..overrides()
        };
        let mut out = Vec::new();
        for &p in PRESETS {
            for input in [MappingInput::default(), overrides(), generic()] {
                if let Ok(m) = Mapping::build(p, input) {
                    out.push(m);
                }
            }
        }
        // Every preset must have been built at least once.
        assert!(
            out.len() >= PRESETS.len(),
            "a preset's mapping did not build"
        );
        out
    })
}

/// The input as JSON (anything else is skipped) through every mapping: never panics; progress,
/// when read, is a fraction in 0..=1.
pub fn status_mapping(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for m in mappings() {
        if let Ok(obs) = m.read(&body)
            && let Some(p) = obs.progress
        {
            assert!(
                p.is_finite() && (0.0..=1.0).contains(&p),
                "progress {p} out of 0..=1 from {m:?}"
            );
        }
    }
}

/// Header names the hint parser reads; a record's first byte picks one.
const HINT_HEADERS: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "x-ms-retry-after-ms",
    "openai-poll-after-ms",
    "x-poll-interval",
    "ratelimit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit-policy",
];

/// Fields: `now` (8 bytes, little-endian unix milliseconds), `max` (4 bytes, little-endian
/// seconds), then header records: first byte picks a name of [`HINT_HEADERS`] (beyond them, the
/// name is the record up to `:`), the rest is the value. `parse_hint` never panics and its
/// answer is at most `max`.
pub fn hints(data: &[u8]) {
    let f = fields(data);
    let now = Timestamp(u64::from_le_bytes(fixed(field(&f, 0))));
    let max = Duration::from_secs(u64::from(u32::from_le_bytes(fixed(field(&f, 1)))));
    let mut h = HeaderMap::new();
    for rec in f.iter().skip(2) {
        let Some((&pick, rest)) = rec.split_first() else {
            continue;
        };
        let (name, value) = match HINT_HEADERS.get(usize::from(pick)) {
            Some(n) => (HeaderName::from_static(n), rest),
            None => {
                let at = rest.iter().position(|b| *b == b':').unwrap_or(rest.len());
                let Ok(n) = HeaderName::from_bytes(&rest[..at]) else {
                    continue;
                };
                (n, rest.get(at + 1..).unwrap_or_default())
            }
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            h.append(name, v);
        }
    }
    if let Some(d) = parse_hint(&h, now, max) {
        assert!(d <= max, "hint {d:?} exceeds max {max:?}");
    }
    if let Some(d) = parse_hint(&h, now, crate::schedule::policy::HINT_MAX) {
        assert!(d <= crate::schedule::policy::HINT_MAX);
    }
}

fn fixed<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (d, s) in out.iter_mut().zip(b) {
        *d = *s;
    }
    out
}

/// Any environment variable a preset's headers name resolves to a placeholder (an API
/// credential such as `RUNWAYML_API_SECRET` too); other secrets, such as the callback secret,
/// are left unset (a generated one would be used), and so are hookshim's own settings
/// (`HOOKSHIM_LOG_FORMAT`, …), which must be one of their values or absent.
fn any_env(name: &str) -> Option<String> {
    let secret = name.contains("SECRET") && !name.ends_with("_API_SECRET");
    (!secret && !name.starts_with("HOOKSHIM_")).then(|| "fuzz".into())
}

/// One upstream per preset, each with a base URL that has a path (`/api/v1/`).
pub fn upstreams() -> &'static [UpstreamConfig] {
    static UPSTREAMS: OnceLock<Vec<UpstreamConfig>> = OnceLock::new();
    UPSTREAMS.get_or_init(|| {
        let mut text = String::from("[store]\npath = \"data\"\n");
        for (i, p) in PRESETS.iter().enumerate() {
            text.push_str(&format!(
                "[upstreams.u{i}]\npreset = \"{}\"\nbase_url = \"http://127.0.0.1:7000/api/v1/\"\n",
                p.name()
            ));
            if p.defaults().read.is_none() {
                text.push_str(
                    "status_path = \"jobs/{operation}/status\"\nstatus_field = \"/state\"\n\
                     succeeded = [\"done\"]\nfailed = [\"error\"]\n",
                );
            }
        }
        match Config::parse(&text, "fuzzing", &any_env) {
            Ok(c) => c.upstreams.into_values().collect(),
            Err(e) => panic!("the fuzzing upstreams do not resolve: {e}"),
        }
    })
}

/// `url` lies under `base`: same scheme, host and port, no user info, the path below the base's,
/// and no segment that is `.` or `..` once percent-decoded (repeatedly) — also with a `;`
/// parameter or cut at a NUL, and with `\` as a separator. Written apart from
/// `upstream::ensure_under` so that the two check each other.
pub fn is_under(base: &Url, url: &Url) -> bool {
    let origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default();
    let no_user = url.username().is_empty() && url.password().is_none();
    let below = url.path().starts_with(base.path());
    let clean = url.path().split('/').all(|seg| {
        let mut s = seg.to_string();
        loop {
            let d = percent_encoding::percent_decode_str(&s)
                .decode_utf8_lossy()
                .into_owned();
            if d == s {
                break;
            }
            s = d;
        }
        s.split(['/', '\\']).all(|part| {
            let name = part.split([';', '\0']).next().unwrap_or_default().trim();
            name != "." && name != ".."
        })
    });
    origin && no_user && below && clean
}

/// The input as an operation id (lossy UTF-8) through `validate_operation_id`, and for every
/// preset through `prepare_operation` and `status_url`: never panics, and every URL returned
/// is under the upstream's base URL ([`is_under`]).
pub fn operation_ids(data: &[u8]) {
    let op = String::from_utf8_lossy(data);
    let valid = validate_operation_id(&op).is_ok();
    for up in upstreams() {
        if let Ok(url) = status_url(up, &op) {
            assert!(
                is_under(&up.base_url, &url),
                "{}: status URL {url} of {op:?} is not under {}",
                up.preset.name(),
                up.base_url
            );
        }
        if let Ok(canonical) = prepare_operation(up, &op) {
            assert!(
                valid,
                "prepare_operation accepted {op:?}, which is not valid"
            );
            match status_url(up, &canonical) {
                Ok(url) => assert!(
                    is_under(&up.base_url, &url),
                    "{}: status URL {url} of {canonical:?} is not under {}",
                    up.preset.name(),
                    up.base_url
                ),
                Err(e) => panic!("prepared operation {canonical:?} has no status URL: {e}"),
            }
        }
    }
}

/// The input as config text (lossy UTF-8) through `Config::parse`: never panics; when it
/// resolves, its redacted view renders.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let env = |name: &str| match name {
        "HOOKSHIM_CALLBACK_SECRET" | "JOBS_WEBHOOK_SECRET" => {
            Some("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into())
        }
        "ED_PUBLIC" => Some("whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into()),
        "HOOKSHIM_API_TOKEN" | "TOKEN" => Some("t0k".into()),
        _ => None,
    };
    if let Ok(c) = Config::parse(&text, "fuzz.toml", &env) {
        let _ = c.redacted();
    }
}
