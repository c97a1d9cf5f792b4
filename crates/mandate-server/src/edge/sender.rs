//! RFC 9449 at the edge, for every adapter at once: a request under the `DPoP` scheme is
//! checked (the proof is for this method and URL, fresh, new, for this token, by the key
//! the token is bound to) and then handed on as an ordinary bearer request; a token bound
//! to a key that arrives as a bearer token is refused. Adapters never see a DPoP request
//! they would have to check themselves.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mandate_engine::Engine;

use crate::error::ApiError;

/// The `DPoP` request header.
pub const DPOP: &str = "dpop";

/// Algorithms a proof may use, as advertised in `WWW-Authenticate` (RFC 9449 §7.1).
const ALGS: &str = "ES256 EdDSA RS256 PS256";

/// The one `DPoP` header of a request, if it has one; two are refused.
pub fn dpop_header(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut all = headers.get_all(DPOP).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "dpop_proof_malformed",
            "the request carries more than one DPoP header: send exactly one",
        ));
    }
    first.to_str().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "dpop_proof_malformed",
            "the DPoP header is not visible ASCII",
        )
    })
}

/// A 401 whose challenge names the DPoP scheme (RFC 9449 §7.1).
pub fn challenge(e: ApiError) -> Response {
    let error = if e.code == "dpop_required" || e.code == "dpop_proof_missing" {
        "invalid_token"
    } else {
        "invalid_dpop_proof"
    };
    let mut res = e.into_response();
    let value = format!("DPoP error=\"{error}\", algs=\"{ALGS}\"");
    if let Ok(v) = HeaderValue::from_str(&value) {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

/// The verified DPoP proof of a request that issues a token (for `POST` to `path` on this
/// server), or `None` without one. It is not remembered yet: call [`record`] once the
/// request has authenticated, and bind the token to the proof's key.
pub fn binding(
    engine: &Engine,
    headers: &HeaderMap,
    path: &str,
) -> Result<Option<mandate_token::dpop::Proof>, ApiError> {
    let Some(proof) = dpop_header(headers)? else {
        return Ok(None);
    };
    let origin = engine.origin_for_host(host(headers));
    engine
        .dpop_proof(proof, "POST", &format!("{origin}{path}"), None)
        .map(Some)
        .map_err(issuance_error)
}

/// Records an issuance proof against replay; its key's thumbprint, to bind the token to.
pub fn record(engine: &Engine, proof: &mandate_token::dpop::Proof) -> Result<String, ApiError> {
    engine
        .record_proof(proof)
        .map(|()| proof.jkt.clone())
        .map_err(issuance_error)
}

/// A bad proof at issuance is a bad request (nothing was authenticated with it).
fn issuance_error(e: mandate_engine::Error) -> ApiError {
    let mut e = ApiError::from(e);
    if e.status == StatusCode::UNAUTHORIZED {
        e.status = StatusCode::BAD_REQUEST;
    }
    e
}

/// The middleware. Requests without an `Authorization` header, or with one it cannot
/// read, go on unchanged: the adapter's own extraction refuses them as before.
pub async fn sender_constraint(
    State(engine): State<Arc<Engine>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some((scheme, token)) = authorization(req.headers()) else {
        return next.run(req).await;
    };
    if scheme.eq_ignore_ascii_case("dpop") {
        let proof = match dpop_header(req.headers()) {
            Ok(Some(p)) => p.to_owned(),
            Ok(None) => {
                let e = mandate_engine::Error::new(
                    mandate_engine::Kind::Unauthenticated,
                    "dpop_proof_missing",
                    "a token sent under the DPoP scheme needs a DPoP proof header",
                );
                return challenge(engine.refuse_sender(&token, e).await.into());
            }
            Err(e) => return challenge(e),
        };
        let url = format!(
            "{}{}",
            engine.origin_for_host(host(req.headers())),
            req.uri().path()
        );
        if let Err(e) = engine.check_dpop(&token, &proof, req.method().as_str(), &url) {
            return challenge(engine.refuse_sender(&token, e).await.into());
        }
        // Checked: the adapters read it as the bearer it now is.
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
        req.headers_mut().remove(DPOP);
        return next.run(req).await;
    }
    if scheme.eq_ignore_ascii_case("bearer") && engine.bound_key(&token).is_some() {
        let e = mandate_engine::Error::new(
            mandate_engine::Kind::Unauthenticated,
            "dpop_required",
            "this task token is bound to a key: send it as `Authorization: DPoP <token>` with a DPoP proof (RFC 9449)",
        );
        return challenge(engine.refuse_sender(&token, e).await.into());
    }
    next.run(req).await
}

/// The request's `Host`, when it has exactly one readable one.
fn host(headers: &HeaderMap) -> Option<&str> {
    let mut all = headers.get_all(header::HOST).iter();
    let h = all.next()?;
    if all.next().is_some() {
        return None;
    }
    h.to_str().ok()
}

/// The scheme and token of the one `Authorization` header, when it reads as one.
fn authorization(headers: &HeaderMap) -> Option<(String, String)> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let value = all.next()?;
    if all.next().is_some() {
        return None;
    }
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (!token.is_empty() && !token.contains(' ')).then(|| (scheme.to_owned(), token.to_owned()))
}
