//! The API's error answers and body extractor (D117): every error is `{"code", "error"}` with a
//! stable snake_case code and a message naming the field or the cause.
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest JSON body the API reads; a channel or a PTZ command is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// One API error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable: `unauthorized`, `bad_json`, `invalid_field`, `not_found`, `conflict`,
    /// `unavailable`, `internal`.
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    error: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn bad_json(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_json", message)
    }
    pub fn invalid_field(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    /// Same code, another HTTP status (e.g. 504 for a device that did not answer).
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status.as_u16(), self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(Body { code: self.code, error: &self.message })).into_response()
    }
}

/// A JSON body; a malformed, wrong-typed, non-JSON or oversized body is a `bad_json` answer whose
/// message names the field path and the position (`source.rtsp.url: missing field ... at line 1
/// column 40`).
pub struct ApiJson<T>(pub T);

/// Like [`ApiJson`], but an absent body (curl -X POST without -d) is `T::default()`.
pub struct ApiJsonOrDefault<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let body = read_body(req).await?;
        parse(&body).map(ApiJson)
    }
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for ApiJsonOrDefault<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let body = read_body(req).await?;
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(ApiJsonOrDefault(T::default()));
        }
        parse(&body).map(ApiJsonOrDefault)
    }
}

/// Query string parameters; a missing or malformed one is `invalid_field` naming it.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::invalid_field(e.body_text()))
    }
}

async fn read_body(req: Request) -> Result<axum::body::Bytes, ApiError> {
    let ct = req.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned());
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await.map_err(|e| {
        // A body over the limit, or one cut off by the peer.
        let mut cause: Option<&dyn std::error::Error> = Some(&e);
        let mut too_big = false;
        while let Some(c) = cause {
            too_big |= c.to_string().contains("length limit exceeded");
            cause = c.source();
        }
        match too_big {
            true => ApiError::bad_json(format!("body larger than {MAX_BODY_BYTES} bytes"))
                .with_status(StatusCode::PAYLOAD_TOO_LARGE),
            false => ApiError::bad_json(format!("cannot read the body: {e}")),
        }
    })?;
    // The policy (D61) refuses non-JSON writes first; this holds for a router used without it.
    if !body.is_empty() && !ct.as_deref().is_some_and(is_json) {
        return Err(ApiError::bad_json(format!(
            "the body needs Content-Type: application/json (got {})",
            ct.as_deref().unwrap_or("none")
        ))
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    Ok(body)
}

/// Parses a whole JSON document; the error names the field path and where in the text.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| ApiError::bad_json(format!("bad JSON body: {}", describe(&e))))?;
    de.end().map_err(|e| ApiError::bad_json(format!("bad JSON body: {e}")))?;
    Ok(v)
}

/// `field.path: what` (just `what` at the top level).
pub fn describe<E: std::fmt::Display>(e: &serde_path_to_error::Error<E>) -> String {
    match e.path().to_string().as_str() {
        "." => e.inner().to_string(),
        path => format!("{path}: {}", e.inner()),
    }
}

pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Rtsp {
        url: String,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    #[allow(dead_code)]
    enum Source {
        Rtsp(Rtsp),
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Channel {
        id: String,
        source: Source,
        record: Option<bool>,
    }

    #[test]
    fn messages_name_the_field_and_the_position() {
        let e = parse::<Channel>(br#"{"id":"c","source":{"rtsp":{}}}"#).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_json"));
        assert!(e.message.contains("source.rtsp: missing field `url`"), "{e}");
        assert!(e.message.contains("line 1 column"), "{e}");
        let e = parse::<Channel>(br#"{"id":"c","source":{"rtsp":{"url":"x"}},"record":"yes"}"#).unwrap_err();
        assert!(e.message.contains("record: invalid type: string \"yes\", expected a boolean"), "{e}");
        let e = parse::<Channel>(br#"{"id":"c","#).unwrap_err();
        assert!(e.message.contains("EOF while parsing"), "{e}");
        let e = parse::<Channel>(br#"{"id":"c","source":{"rtsp":{"url":"x"}}} trailing"#).unwrap_err();
        assert!(e.message.contains("trailing characters"), "{e}");
    }
}
