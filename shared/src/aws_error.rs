//! One reading of a failed AWS SDK call for every AWS client of this crate (ECS, SQS, DynamoDB,
//! Secrets Manager): a short reason for logs, reports and errors, and whether trying again later
//! can help.
//!
//! The SDK's own `DisplayErrorContext` prints the whole raw response (headers and body) when the
//! error body cannot be parsed, e.g. the XML `AccessDenied` that an IAM-enforcing endpoint or a
//! proxy sends to a JSON service. The reason here keeps what an operator acts on: the operation,
//! the HTTP status, the error code and message (from the body when the SDK could not read it).

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Error codes worth retrying even when they come with a 4xx status.
const TRANSIENT_CODES: [&str; 19] = [
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "ProvisionedThroughputExceededException",
    "ServerException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "RequestTimeout",
    "RequestTimeoutException",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
];

/// A failed SDK call, read.
#[derive(Debug, Clone, PartialEq)]
pub struct SdkFailure {
    /// `HTTP 403: AccessDenied: User ... is not authorized ...`, or the transport problem.
    pub reason: String,
    /// The service's error code, when there is one.
    pub code: Option<String>,
    /// Worth retrying later: 5xx, 429, throttling codes, time-outs and connection failures.
    pub transient: bool,
}

/// Whether `code` is a throttling or server-side code worth retrying.
pub fn is_transient_code(code: &str) -> bool {
    TRANSIENT_CODES.contains(&code)
}

/// Reads `err` (see the module documentation).
pub fn describe<E>(err: &SdkError<E, HttpResponse>) -> SdkFailure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let e = ctx.err();
            let (code, what) = match (e.code(), from_body(ctx.raw().body().bytes().unwrap_or_default())) {
                (Some(code), _) => {
                    (Some(code.to_owned()), e.message().map_or_else(|| code.to_owned(), |m| format!("{code}: {m}")))
                }
                // The SDK could not read an XML error body: its code and message.
                (None, Some((code, message))) => {
                    let what = message.map_or_else(|| code.clone(), |m| format!("{code}: {m}"));
                    (Some(code), what)
                }
                (None, None) => (None, DisplayErrorContext(e).to_string()),
            };
            let transient = status >= 500 || status == 429 || code.as_deref().is_some_and(is_transient_code);
            SdkFailure { reason: format!("HTTP {status}: {what}"), code, transient }
        }
        SdkError::ConstructionFailure(_) => {
            SdkFailure { reason: DisplayErrorContext(err).to_string(), code: None, transient: false }
        }
        // Time-outs, connection failures, unreadable answers (and future kinds): try again later.
        _ => SdkFailure { reason: DisplayErrorContext(err).to_string(), code: None, transient: true },
    }
}

/// The `<Code>` and `<Message>` of an XML error body (what an IAM-enforcing endpoint or a proxy
/// sends even to a JSON service), if it is one.
fn from_body(body: &[u8]) -> Option<(String, Option<String>)> {
    let text = String::from_utf8_lossy(body);
    let element = |tag: &str| {
        let open = format!("<{tag}>");
        let start = text.find(&open)? + open.len();
        let end = start + text[start..].find(&format!("</{tag}>"))?;
        Some(text[start..end].trim().to_owned())
    };
    element("Code").filter(|c| !c.is_empty()).map(|code| (code, element("Message")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_xml_error_body_gives_its_code_and_message() {
        let body = br#"<?xml version="1.0"?><ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>User: u is not authorized</Message></Error></Errors></ErrorResponse>"#;
        assert_eq!(from_body(body), Some(("AccessDenied".into(), Some("User: u is not authorized".into()))));
        assert_eq!(from_body(b"<Error><Code>Throttling</Code></Error>"), Some(("Throttling".into(), None)));
        assert_eq!(from_body(b"<html>Bad gateway</html>"), None);
        assert_eq!(from_body(b"Mock HTTP client dummy response"), None);
        assert_eq!(from_body(b""), None);
    }

    #[test]
    fn throttling_codes_are_transient() {
        assert!(
            is_transient_code("ThrottlingException") && is_transient_code("ProvisionedThroughputExceededException")
        );
        assert!(!is_transient_code("AccessDeniedException") && !is_transient_code("ResourceNotFoundException"));
    }
}
