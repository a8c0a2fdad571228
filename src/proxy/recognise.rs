//! What a proxied request is, by its method and path: a create of a job the upstream's preset
//! knows, the status read of a job, or anything else (passed through). Pure.
//!
//! Matching is API-version agnostic: the path is taken below the upstream's `base_url` path
//! when it starts with it, else with a leading version segment (`v1`, `v1beta`, `v1alpha`,
//! `v2`, `v1beta1`, ...) removed, so `/v1/batches/x` and `/v1beta/batches/x` are one request.

use percent_encoding::percent_decode_str;

use crate::upstream::{CreateId, UpstreamConfig};

/// How a create response names its job.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum IdFrom<'a> {
    /// A JSON pointer into the response body.
    Field(&'a str),
    /// The first of these response headers present.
    Header(&'static [&'static str]),
}

/// A request that creates a job when its answer is 2xx.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Create<'a> {
    pub needs_background: bool,
    pub id: IdFrom<'a>,
    pub returns_job: bool,
}

/// What a proxied request is.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind<'a> {
    Create(Create<'a>),
    /// A status read of this operation (as the app wrote it; normalise before looking it up).
    StatusRead(String),
    Other,
}

/// Whether `segment` is an API version: `v` + digits, optionally `alpha`/`beta` + digits.
pub fn is_version(segment: &str) -> bool {
    let Some(rest) = segment.strip_prefix('v') else {
        return false;
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let tail = &rest[digits..];
    let tail = tail
        .strip_prefix("alpha")
        .or_else(|| tail.strip_prefix("beta"))
        .unwrap_or(tail);
    tail.chars().all(|c| c.is_ascii_digit())
}

/// `path` (below `/proxy/{upstream}/`, no leading `/`) as the patterns match it: below the
/// base URL's path when under it, else without a leading version segment; no trailing `/`.
pub fn match_path<'p>(base_path: &str, path: &'p str) -> &'p str {
    let base = base_path.trim_matches('/');
    let below = if base.is_empty() {
        None
    } else {
        path.strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('/').or((rest.is_empty()).then_some(rest)))
    };
    let rest = below.unwrap_or_else(|| match path.split_once('/') {
        Some((first, rest)) if is_version(first) => rest,
        None if is_version(path) => "",
        _ => path,
    });
    rest.trim_end_matches('/')
}

/// Recognise a request to upstream `up`: `method`, the path as [`match_path`] gives it, and
/// the full upstream URL it goes to.
pub fn recognise<'u>(up: &'u UpstreamConfig, method: &str, path: &str, url: &str) -> Kind<'u> {
    if let Some(p) = up.preset.defaults().proxy {
        if method == "GET" {
            if let Some(op) = (p.status_read)(path, url) {
                return Kind::StatusRead(op);
            }
        }
        return match (p.create)(method, path) {
            Some(rule) => Kind::Create(Create {
                needs_background: rule.needs_background,
                id: match rule.id {
                    CreateId::Field(f) => IdFrom::Field(f),
                    CreateId::Header(h) => IdFrom::Header(h),
                },
                returns_job: rule.returns_job,
            }),
            None => Kind::Other,
        };
    }
    // A preset without patterns (`generic`): `proxy.create`, and reads of `status_path`.
    if method == "GET" {
        if let Some(op) = template_match(&up.status_path, path) {
            return Kind::StatusRead(op);
        }
    }
    match &up.proxy.create {
        Some(c) if c.method == method && c.path == path => Kind::Create(Create {
            needs_background: false,
            id: IdFrom::Field(&c.id_field),
            returns_job: true,
        }),
        _ => Kind::Other,
    }
}

/// The `{operation}` of `template` (a `status_path`, itself matched version-agnostically) in
/// `path`, percent-decoded.
fn template_match(template: &str, path: &str) -> Option<String> {
    let template = match_path("", template.trim_start_matches('/'));
    let (prefix, suffix) = template.split_once("{operation}")?;
    let middle = path.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if middle.is_empty() {
        return None;
    }
    Some(percent_decode_str(middle).decode_utf8_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::config::testing::{env, parse};

    #[test]
    fn versions_are_recognised() {
        for v in ["v1", "v2", "v1beta", "v1alpha", "v1beta1", "v10"] {
            assert!(is_version(v), "{v}");
        }
        for v in ["v", "batches", "vbeta", "v1gamma", "version"] {
            assert!(!is_version(v), "{v}");
        }
        assert_eq!(match_path("/v1/", "v1/batches/b1"), "batches/b1");
        assert_eq!(match_path("/v1beta/", "v1/batches/b1"), "batches/b1");
        assert_eq!(match_path("/v1beta/", "v1beta/batches/b1/"), "batches/b1");
        assert_eq!(match_path("/", "batches/b1"), "batches/b1");
        assert_eq!(match_path("/api/v2/", "api/v2/jobs/1"), "jobs/1");
        assert_eq!(match_path("/api/v2/", "v3/jobs/1"), "jobs/1");
    }

    fn upstreams() -> std::collections::BTreeMap<String, UpstreamConfig> {
        let text = r#"
[upstreams.ob]
preset = "openai-batch"
[upstreams.or]
preset = "openai-response"
[upstreams.gb]
preset = "gemini-batch"
[upstreams.go]
preset = "google-operation"
[upstreams.gi]
preset = "gemini-interaction"
[upstreams.rp]
preset = "replicate"
[upstreams.ab]
preset = "anthropic-batch"
[upstreams.az]
preset = "azure-async"
[upstreams.jobs]
base_url = "http://127.0.0.1:7000/api/"
status_path = "jobs/{operation}"
status_field = "/state"
succeeded = ["done"]
failed = ["error"]
proxy = { enabled = true, create = { path = "jobs", id_field = "/job/id" } }
"#;
        parse(text, &|k| env(k).or(Some("x".into()))).unwrap()
    }

    #[test]
    fn each_preset_recognises_its_creates_and_status_reads() {
        let ups = upstreams();
        let kind = |name: &str, method: &str, raw: &str| {
            let up = &ups[name];
            let p = match_path(up.base_url.path(), raw);
            recognise(up, method, p, &format!("https://h/{raw}"))
        };
        fn created(k: Kind<'_>) -> Option<(bool, IdFrom<'_>)> {
            match k {
                Kind::Create(c) => Some((c.needs_background, c.id)),
                _ => None,
            }
        }
        let read = |k: Kind| match k {
            Kind::StatusRead(op) => Some(op),
            _ => None,
        };
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            Option<(bool, IdFrom<'static>)>,
        );
        let cases: &[Case] = &[
            (
                "ob",
                "POST",
                "v1/batches",
                Some((false, IdFrom::Field("/id"))),
            ),
            ("ob", "POST", "v1/batches/b1/cancel", None),
            ("ob", "GET", "v1/batches", None),
            (
                "or",
                "POST",
                "v1/responses",
                Some((true, IdFrom::Field("/id"))),
            ),
            (
                "gb",
                "POST",
                "v1beta/models/gemini-2.5-flash:batchGenerateContent",
                Some((false, IdFrom::Field("/name"))),
            ),
            (
                "gb",
                "POST",
                "v1/models/gemini-2.5-flash:generateContent",
                None,
            ),
            (
                "go",
                "POST",
                "v1beta/models/veo-3.0:predictLongRunning",
                Some((false, IdFrom::Field("/name"))),
            ),
            (
                "gi",
                "POST",
                "v1beta/interactions",
                Some((true, IdFrom::Field("/id"))),
            ),
            (
                "rp",
                "POST",
                "v1/predictions",
                Some((false, IdFrom::Field("/id"))),
            ),
            (
                "rp",
                "POST",
                "v1/models/black-forest-labs/flux/predictions",
                Some((false, IdFrom::Field("/id"))),
            ),
            (
                "rp",
                "POST",
                "v1/deployments/acme/my-flux/predictions",
                Some((false, IdFrom::Field("/id"))),
            ),
            ("rp", "POST", "v1/models/x/predictions", None),
            (
                "ab",
                "POST",
                "v1/messages/batches",
                Some((false, IdFrom::Field("/id"))),
            ),
            ("ab", "POST", "v1/messages", None),
            (
                "az",
                "PUT",
                "subscriptions/s/resourceGroups/g",
                Some((
                    false,
                    IdFrom::Header(&["azure-asyncoperation", "operation-location"]),
                )),
            ),
            (
                "jobs",
                "POST",
                "api/jobs",
                Some((false, IdFrom::Field("/job/id"))),
            ),
            ("jobs", "PUT", "api/jobs", None),
        ];
        for (name, method, raw, want) in cases {
            assert_eq!(
                created(kind(name, method, raw)),
                *want,
                "{name} {method} {raw}"
            );
        }
        let reads: &[(&str, &str, Option<&str>)] = &[
            ("ob", "v1/batches/batch_1", Some("batch_1")),
            ("ob", "v2/batches/batch_1", Some("batch_1")),
            ("ob", "v1/batches/batch_1/cancel", None),
            ("or", "v1/responses/resp_1", Some("resp_1")),
            ("gb", "v1beta/batches/123", Some("batches/123")),
            ("gb", "v1/batches/123", Some("batches/123")),
            ("gb", "v1beta/batches/123:cancel", None),
            (
                "go",
                "v1beta/models/veo-3.0/operations/op1",
                Some("models/veo-3.0/operations/op1"),
            ),
            ("go", "v1/operations/op1", Some("operations/op1")),
            ("gi", "v1beta/interactions/i1", Some("i1")),
            ("rp", "v1/predictions/p1", Some("p1")),
            ("ab", "v1/messages/batches/msgbatch_1", Some("msgbatch_1")),
            ("ab", "v1/messages/batches/msgbatch_1/results", None),
            (
                "az",
                "x/operations/1?api-version=2",
                Some("https://h/x/operations/1?api-version=2"),
            ),
            ("jobs", "api/jobs/j%201", Some("j 1")),
            ("jobs", "api/other/j1", None),
        ];
        for (name, raw, want) in reads {
            assert_eq!(
                read(kind(name, "GET", raw)).as_deref(),
                *want,
                "{name} GET {raw}"
            );
        }
    }
}
