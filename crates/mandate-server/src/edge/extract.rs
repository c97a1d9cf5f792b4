//! Extractors that turn every malformed input into a clear 4xx with a stable code.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// JSON body with Mandate's error codes: `malformed_json` (400: not JSON, a duplicate key,
/// too deep, trailing text), `invalid_request` (422: unknown fields, wrong types, invalid
/// values), `unsupported_media_type` (415), `body_too_large` (413).
///
/// The text is checked by [`mandate_core::strict_json`] before it is deserialised, the
/// same check every other entry point of attacker JSON makes.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers()) {
            return Err(unsupported_media_type());
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| json_error(&JsonRejection::BytesRejection(e)))?;
        strict_body(&bytes)?;
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_error(&rejection)),
        }
    }
}

/// Middleware for routes whose JSON bodies are parsed by someone else (rmcp's JSON-RPC on
/// `/mcp`): the body is read (at most `limit` bytes) and checked by
/// [`mandate_core::strict_json`] before the inner service sees it, so a duplicate key is
/// refused there exactly as on `/v1`. Bodiless requests pass untouched.
pub async fn strict_json_body(
    axum::extract::State(limit): axum::extract::State<usize>,
    req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request bodies are at most {limit} bytes"),
            )
            .into_response();
        }
    };
    if !bytes.is_empty()
        && let Err(e) = strict_body(&bytes)
    {
        return e.into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// `application/json` or `application/<anything>+json`, as axum's `Json` accepts.
fn is_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or_default().trim();
    let Some((kind, sub)) = mime.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || sub.to_ascii_lowercase().ends_with("+json"))
}

/// 400 `malformed_json` unless `bytes` pass [`mandate_core::strict_json`]; the message
/// names what is wrong (the duplicate key, with its line and column).
pub(crate) fn strict_body(bytes: &[u8]) -> Result<(), ApiError> {
    match mandate_core::strict_json(bytes) {
        Ok(_) => Ok(()),
        Err(mandate_core::ArgsError::Json(m)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("request body is not valid JSON: {m}"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("request body is not valid JSON: {e}"),
        )),
    }
}

fn json_error(r: &JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonSyntaxError(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("request body is not valid JSON: {}", inner(e)),
        ),
        JsonRejection::JsonDataError(e) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("request body does not fit this endpoint: {}", inner(e)),
        ),
        JsonRejection::MissingJsonContentType(_) => unsupported_media_type(),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body exceeds the size limit",
            )
        }
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("request body could not be read: {other}"),
        ),
    }
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON with `Content-Type: application/json`",
    )
}

/// The innermost error text (serde's own message, with line and column).
fn inner(e: &dyn std::error::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A bearer token from `Authorization: Bearer …`.
#[derive(Debug)]
pub struct Bearer(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        bearer_token(&parts.headers).map(Self)
    }
}

/// The token of `Authorization: Bearer …`, or 401 `missing_token` /
/// `invalid_authorization_header`. Two `Authorization` headers are refused (401
/// `invalid_authorization_header`): whichever one a reader picks, another reader (a proxy
/// in front, an upstream behind) may pick the other.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Result<String, ApiError> {
    let mut all = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let Some(value) = all.next() else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "send `Authorization: Bearer <token>`",
        ));
    };
    if all.next().is_some() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_authorization_header",
            "the request carries more than one Authorization header: send exactly one",
        ));
    }
    let bad = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_authorization_header",
            "the Authorization header must be `Bearer <token>`",
        )
    };
    let value = value.to_str().map_err(|_| bad())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() || token.contains(' ') {
        return Err(bad());
    }
    Ok(token.trim().to_owned())
}

/// Query parameters with Mandate's error code: `invalid_query` (400) names what is wrong.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(rejection) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!(
                    "query parameters do not fit this endpoint: {}",
                    inner(&rejection)
                ),
            )),
        }
    }
}

/// The header an enforcement point (an AuthZEN caller, a resource server introspecting)
/// authenticates itself with, beside the agent's own token.
pub const POINT_HEADER: &str = "x-mandate-point-token";

/// The enforcement point a request comes from: the one its `X-Mandate-Point-Token` names.
/// A token that matches no configured point is refused, and so is a request without one
/// when the server requires points to authenticate (any is configured).
pub fn enforcement_point(
    engine: &mandate_engine::Engine,
    headers: &axum::http::HeaderMap,
) -> Result<Option<String>, ApiError> {
    let refused = |message: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "point_unauthenticated",
            message.to_owned(),
        )
    };
    let mut all = headers.get_all(POINT_HEADER).iter();
    match (all.next(), all.next()) {
        (None, _) if engine.points_required() => Err(refused(
            "this server requires enforcement points to authenticate: send X-Mandate-Point-Token",
        )),
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .ok()
            .and_then(|t| engine.enforcement_point(t.trim()))
            .map(Some)
            .ok_or_else(|| refused("X-Mandate-Point-Token names no configured enforcement point")),
        (Some(_), Some(_)) => Err(refused(
            "the request carries more than one X-Mandate-Point-Token: send exactly one",
        )),
    }
}
