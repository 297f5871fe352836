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

/// At most this many characters of an unparsed error body go into a reason.
const BODY_SNIPPET: usize = 300;

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
            let (code, message) = match e.code() {
                Some(code) => (Some(code.to_owned()), e.message().map(str::to_owned)),
                None => from_body(ctx.raw().body().bytes().unwrap_or_default()),
            };
            let what = match (&code, &message) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.clone(),
                (None, Some(body)) => body.clone(),
                (None, None) => DisplayErrorContext(e).to_string(),
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

/// The code and message of an error body the SDK could not parse: `<Code>`/`<Message>` of an XML
/// error, else the start of the body as text.
fn from_body(body: &[u8]) -> (Option<String>, Option<String>) {
    let text = String::from_utf8_lossy(body);
    let element = |tag: &str| {
        let open = format!("<{tag}>");
        let start = text.find(&open)? + open.len();
        let end = start + text[start..].find(&format!("</{tag}>"))?;
        Some(text[start..end].trim().to_owned())
    };
    match element("Code") {
        Some(code) => (Some(code), element("Message")),
        None => {
            let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let snippet: String = flat.chars().take(BODY_SNIPPET).collect();
            (None, Some(snippet).filter(|s| !s.is_empty()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_xml_error_body_gives_its_code_and_message() {
        let body = br#"<?xml version="1.0"?><ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>User: u is not authorized</Message></Error></Errors></ErrorResponse>"#;
        assert_eq!(from_body(body), (Some("AccessDenied".into()), Some("User: u is not authorized".into())));
        assert_eq!(from_body(b"  <html>\n  Bad   gateway </html> "), (None, Some("<html> Bad gateway </html>".into())));
        assert_eq!(from_body(b""), (None, None));
        let long = "x".repeat(1000);
        assert_eq!(from_body(long.as_bytes()).1.map(|s| s.len()), Some(BODY_SNIPPET));
    }

    #[test]
    fn throttling_codes_are_transient() {
        assert!(
            is_transient_code("ThrottlingException") && is_transient_code("ProvisionedThroughputExceededException")
        );
        assert!(!is_transient_code("AccessDeniedException") && !is_transient_code("ResourceNotFoundException"));
    }
}
