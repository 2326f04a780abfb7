//! AdmissionReview in, AdmissionResponse out: reads only `admission.k8s.io/v1` reviews (and, from one that cannot
//! be read, its uid), and writes the answer as Kubernetes reads it (the patch in base64). What the webhooks decide
//! is in `validate.rs` and `rewrite.rs`; this module knows the review's envelope, never the policy. Pure: no I/O.

use base64::Engine as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::Value;

/// The object of a review, as much of it as berth reads: its metadata and its `spec` (where every pod spec lives).
/// Reading only these is several times cheaper than a generic object, whose flattened rest was most of the cost of
/// a review.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct Workload {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Value>,
}

impl kube::Resource for Workload {
    type DynamicType = ();
    type Scope = kube::core::DynamicResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Workload".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "workloads".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A review request as berth reads it.
pub type Request = AdmissionRequest<Workload>;

/// The one review type berth reads and answers: `admission.k8s.io/v1` `AdmissionReview`.
pub const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
pub const REVIEW_KIND: &str = "AdmissionReview";

/// Why a webhook body is not a review berth can decide; answered with `allowed: false` and this message.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not the JSON of an AdmissionReview.
    #[error("cannot read the AdmissionReview: {0}")]
    Unreadable(#[source] serde_json::Error),
    /// Another apiVersion or kind: its fields may mean something else, so it is not decided.
    #[error(
        "berth reads only {REVIEW_API_VERSION} {REVIEW_KIND}, not apiVersion {api_version:?} kind {kind:?}"
    )]
    UnsupportedType { api_version: String, kind: String },
    /// An AdmissionReview without `request` (a response, or empty).
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// Reads a webhook body as an `admission.k8s.io/v1` `AdmissionReview` request.
pub fn read_review(body: &[u8]) -> Result<Request, ReviewError> {
    let review: AdmissionReview<Workload> =
        serde_json::from_slice(body).map_err(ReviewError::Unreadable)?;
    if review.types.api_version != REVIEW_API_VERSION || review.types.kind != REVIEW_KIND {
        // Echoed in the refusal: a few characters say what was sent, a megabyte would not.
        let shown = |text: String| text.chars().take(100).collect();
        return Err(ReviewError::UnsupportedType {
            api_version: shown(review.types.api_version),
            kind: shown(review.types.kind),
        });
    }
    review.try_into().map_err(|_| ReviewError::NoRequest)
}

/// The `request.uid` of a review body that cannot be read whole (too large, cut off, not valid JSON, another type):
/// the API server writes it near the start (`{"kind":…,"apiVersion":…,"request":{"uid":"…"`), so it is looked for
/// in the first 64 KiB, after `"request"`. Only a plausible uid is taken (1 to 128 characters of letters, digits,
/// `-`, `_`, `.`, `:`), never anything needing unescaping.
pub fn uid_of(body: &[u8]) -> Option<String> {
    let body = &body[..body.len().min(64 * 1024)];
    let find = |haystack: &[u8], needle: &[u8]| {
        haystack
            .windows(needle.len())
            .position(|window| window == needle)
    };
    let request = find(body, b"\"request\"")?;
    let rest = &body[request..];
    let key = find(rest, b"\"uid\"")?;
    let rest = &rest[key + b"\"uid\"".len()..];
    fn skip_space(bytes: &[u8]) -> &[u8] {
        let start = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(bytes.len());
        &bytes[start..]
    }
    let rest = skip_space(rest).strip_prefix(b":")?;
    let rest = skip_space(rest).strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let uid = &rest[..end];
    let plausible = (1..=128).contains(&uid.len())
        && uid
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    plausible.then(|| String::from_utf8_lossy(uid).into_owned())
}

/// The AdmissionReview berth answers with. kube-core's own serialisation writes `response.patch` (a `Vec<u8>`) as a
/// JSON array of numbers, up to four bytes of response per patch byte; Kubernetes' `patch` is a Go `[]byte`, which
/// JSON carries as a base64 string, so that is what berth sends.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ReplyResponse<'a>,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplyResponse<'a> {
    uid: &'a str,
    allowed: bool,
    status: &'a kube::core::Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    audit_annotations: &'a std::collections::HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a [String]>,
}

impl<'a> Reply<'a> {
    pub fn new(response: &'a AdmissionResponse) -> Reply<'a> {
        let patch = response
            .patch
            .as_deref()
            .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes));
        Reply {
            api_version: REVIEW_API_VERSION,
            kind: REVIEW_KIND,
            response: ReplyResponse {
                uid: &response.uid,
                allowed: response.allowed,
                status: &response.result,
                // kube-core sets a patch only with its one patch type, JSONPatch.
                patch_type: patch.as_ref().map(|_| "JSONPatch"),
                patch,
                audit_annotations: &response.audit_annotations,
                warnings: response.warnings.as_deref(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::testing::pod;
    use serde_json::json;

    /// Review finding: a review berth could not read was answered with an empty uid, which the API server discards
    /// (failurePolicy Ignore then admits the pod unchecked). The uid is found at the start of such a body.
    #[test]
    fn the_uid_of_an_unreadable_review_is_found() {
        let uid = "705ab4f5-6393-11e8-b7cc-42010a800002";
        let start = format!(
            r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{"uid":"{uid}","kind":"#
        );
        let cases: Vec<(String, Option<&str>)> = vec![
            (start.clone(), Some(uid)),
            (format!("{start}{}", "x".repeat(100_000)), Some(uid)),
            (
                format!(r#"{{"apiVersion":"v9","request" : {{ "uid" : "{uid}" }}}}"#),
                Some(uid),
            ),
            (r#"{"request":{"uid":""}}"#.into(), None),
            (r#"{"request":{"uid":"a\"b"}}"#.into(), None),
            (r#"{"uid":"outside","request":{}}"#.into(), None),
            (
                format!(r#"{{"request":{{"uid":"{}"}}}}"#, "u".repeat(129)),
                None,
            ),
            ("not json".into(), None),
        ];
        for (body, expected) in cases {
            assert_eq!(uid_of(body.as_bytes()).as_deref(), expected, "{body:.80}");
        }
    }

    /// Issue 9, item 6: any apiVersion and kind was decided and echoed back.
    #[test]
    fn only_v1_admission_reviews_are_read() {
        let body = |api_version: &str, kind: &str| {
            json!({"apiVersion": api_version, "kind": kind, "request": {
                "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "p", "namespace": "apps", "operation": "CREATE", "userInfo": {},
                "object": pod(json!({"containers": [{"name": "web", "image": "nginx:1.25"}]}), None)
            }})
            .to_string()
        };
        assert_eq!(
            read_review(body("admission.k8s.io/v1", "AdmissionReview").as_bytes())
                .map(|r| r.uid)
                .ok()
                .as_deref(),
            Some("u-1")
        );
        for (api_version, kind) in [
            ("admission.k8s.io/v1beta1", "AdmissionReview"),
            ("admission.k8s.io/v2", "AdmissionReview"),
            ("apiextensions.k8s.io/v1", "ConversionReview"),
            ("admission.k8s.io/v1", "Pod"),
            ("v1", "Pod"),
            ("", ""),
        ] {
            let error = read_review(body(api_version, kind).as_bytes())
                .map(|r| r.uid)
                .expect_err(kind)
                .to_string();
            assert_eq!(
                error,
                format!("berth reads only admission.k8s.io/v1 AdmissionReview, not apiVersion {api_version:?} kind {kind:?}")
            );
        }
        // What was sent is shown, not echoed whole.
        let long = "v".repeat(100_000);
        let error = read_review(body(&long, "AdmissionReview").as_bytes())
            .map(|r| r.uid)
            .expect_err("long")
            .to_string();
        assert!(error.len() < 300, "{} bytes of message", error.len());
        let error =
            read_review(b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}")
                .map(|r| r.uid)
                .expect_err("no request");
        assert_eq!(error.to_string(), "the AdmissionReview has no request");
        assert!(read_review(b"[]")
            .map(|r| r.uid)
            .expect_err("not a review")
            .to_string()
            .starts_with("cannot read the AdmissionReview: "));
    }
}
