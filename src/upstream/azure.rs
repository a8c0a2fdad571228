//! Azure asynchronous operations. The app registers the whole status URL it got in the
//! `Azure-AsyncOperation` (or `Operation-Location`) header; that URL is only accepted under the
//! upstream's `base_url` (checked by `status_url`), so an app cannot make hookshim send the
//! upstream's credentials to another host.

use reqwest::Url;
use serde_json::Value;

use super::{Observation, ObservedState, count, ended, non_null, status_text};

use super::presets::{CreateId, CreateRule, PresetSpec, ProxyPatterns};
use crate::schedule::config::PollConfig;

/// `azure-async`: an Azure asynchronous operation; the registered operation is its status URL.
pub static ASYNC: PresetSpec = PresetSpec {
    name: "azure-async",
    base_url: Some("https://management.azure.com/"),
    poll: PollConfig::general(),
    reads: "status (Succeeded / Failed / ValidationFailed / Canceled, any case), percentComplete, error; result is the resource at resourceLocation, else the whole body",
    read: Some(read_status),
    operation_url: Some(operation_url),
    canonical_operation: canonical_url,
    proxy: Some(ProxyPatterns {
        // Any request whose 2xx answer names a status URL; its body is not the operation.
        create: |_, _| {
            Some(CreateRule {
                needs_background: false,
                id: CreateId::Header(&["azure-asyncoperation", "operation-location"]),
                returns_job: false,
            })
        },
        // The status read is a GET of the registered URL itself.
        status_read: |_, url| Some(url.to_string()),
        auth_headers: &["authorization", "api-key", "ocp-apim-subscription-key"],
    }),
    final_resource: Some("/resourceLocation"),
    ..PresetSpec::BASE
};

/// The registration key of an Azure operation is its status URL as `url` writes it, so two
/// spellings of one URL (`127.1` and `127.0.0.1`, an explicit default port, upper-case scheme or
/// host) are one operation. What does not parse is kept as given and refused by
/// [`operation_url`].
fn canonical_url(operation: &str) -> String {
    match Url::parse(operation) {
        Ok(url) => url.to_string(),
        Err(_) => operation.to_string(),
    }
}

/// Parse a registered operation as the absolute status URL it must be.
pub fn operation_url(operation: &str) -> Result<Url, String> {
    let url = Url::parse(operation).map_err(|e| {
        format!(
            "`operation` must be the full status URL from the Azure-AsyncOperation or \
             Operation-Location header ({e})"
        )
    })?;
    if url.fragment().is_some() {
        return Err("`operation`: a status URL has no #fragment".into());
    }
    Ok(url)
}

/// `status` is compared without case (services spell it `Succeeded` or `succeeded`), as
/// azure-core's `base_polling.py` does (`_FINISHED = {succeeded, canceled, failed}`, `_FAILED =
/// {canceled, failed}`, `_SUCCEEDED = {succeeded}`, all lowered). Besides those: `cancelled`
/// (the Translator's spelling), `ValidationFailed` (Document Translation: the job was refused
/// before it ran) is failed, `NotStarted` is pending; anything else is in progress. `result` is
/// the whole body: each service puts its outcome somewhere else (`properties`,
/// `analyzeResult`, ...); when the body names a `resourceLocation`, the poller replaces it with
/// that resource ([`PresetSpec::final_resource`]).
pub fn read_status(body: &Value) -> Result<Observation, String> {
    let raw = status_text(body, "/status")?;
    let state = match raw.to_ascii_lowercase().as_str() {
        "notstarted" => ObservedState::Pending,
        "succeeded" => ObservedState::Succeeded,
        "failed" | "validationfailed" => ObservedState::Failed,
        "canceled" | "cancelled" => ObservedState::Cancelled,
        _ => ObservedState::Running,
    };
    let mut obs = Observation::new(state, Value::from(raw));
    // Always a percentage, so 1 means 1 %, not done.
    obs.progress = count(body.get("percentComplete")).map(|p| (p / 100.0).min(1.0));
    match state {
        ObservedState::Succeeded => {
            obs.result = Some(body.clone());
            obs.progress = Some(1.0);
        }
        ObservedState::Failed | ObservedState::Cancelled => {
            obs.error = Some(non_null(body, "/error").unwrap_or_else(|| {
                ended(
                    &raw.to_ascii_lowercase(),
                    format!("the operation ended with status {raw}"),
                )
            }));
        }
        _ => {}
    }
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_status_url_in_two_spellings_is_one_key() {
        let a = canonical_url(
            "https://management.azure.com/subscriptions/s/operations/x?api-version=1",
        );
        for other in [
            "https://management.azure.com:443/subscriptions/s/operations/x?api-version=1",
            "HTTPS://Management.Azure.COM/subscriptions/s/operations/x?api-version=1",
        ] {
            assert_eq!(canonical_url(other), a);
        }
        assert_eq!(
            canonical_url("http://127.1:8080/a/b"),
            "http://127.0.0.1:8080/a/b"
        );
        assert_eq!(canonical_url("not a url"), "not a url");
    }

    #[test]
    fn statuses_any_case() {
        let read = |s: &str| read_status(&json!({"status": s})).unwrap().state;
        assert_eq!(read("NotStarted"), ObservedState::Pending);
        assert_eq!(read("Running"), ObservedState::Running);
        assert_eq!(read("Deleting"), ObservedState::Running);
        assert_eq!(read("Succeeded"), ObservedState::Succeeded);
        assert_eq!(read("succeeded"), ObservedState::Succeeded);
        assert_eq!(read("Failed"), ObservedState::Failed);
        assert_eq!(read("Canceled"), ObservedState::Cancelled);
        assert_eq!(read("Cancelled"), ObservedState::Cancelled);
        // Document Translation's refusal ends the job (it sat running until the deadline).
        assert_eq!(read("ValidationFailed"), ObservedState::Failed);
        assert_eq!(read("validationfailed"), ObservedState::Failed);
        let o = read_status(&json!({"status": "ValidationFailed"})).unwrap();
        assert_eq!(o.error.unwrap()["code"], "validationfailed");
        assert!(read_status(&json!({"error": {}})).is_err());
    }

    #[test]
    fn percent_complete_is_always_a_percentage() {
        let o = read_status(&json!({"status": "Running", "percentComplete": 1})).unwrap();
        assert_eq!(o.progress, Some(0.01));
        let o = read_status(&json!({"status": "Running", "percentComplete": 55.5})).unwrap();
        assert_eq!(o.progress, Some(0.555));
    }

    #[test]
    fn result_is_the_body_and_error_is_error() {
        let ok = json!({"status": "Succeeded", "properties": {"output": 1}});
        assert_eq!(read_status(&ok).unwrap().result, Some(ok.clone()));
        let failed = read_status(&json!({"status": "Failed",
            "error": {"code": "ResourceQuotaExceeded", "message": "quota"}}))
        .unwrap();
        assert_eq!(failed.error.unwrap()["code"], "ResourceQuotaExceeded");
        assert_eq!(failed.result, None);
        let cancelled = read_status(&json!({"status": "Canceled"})).unwrap();
        assert_eq!(cancelled.error.unwrap()["code"], "canceled");
    }

    #[test]
    fn operation_must_be_an_absolute_url() {
        assert!(operation_url("https://management.azure.com/x?api-version=1").is_ok());
        let e = operation_url("abc").unwrap_err();
        assert!(e.contains("full status URL"), "{e}");
        assert!(operation_url("https://management.azure.com/x#frag").is_err());
    }
}
