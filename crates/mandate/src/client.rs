//! A small JSON client for the Mandate API.

use anyhow::{Context, Result, anyhow};
use reqwest::StatusCode;
use serde_json::Value;

/// Talks to one server.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

/// A response: status and JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// The error code of an error reply (Mandate's, or an OAuth error object's).
    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .or_else(|| self.body["code"].as_str())
            .unwrap_or("")
    }

    /// The body if the status is a success, else an error naming code and message.
    pub fn ok(self) -> Result<Value> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            Err(anyhow!(
                "{} {}: {}",
                self.status.as_u16(),
                self.code(),
                self.body["error"]["message"]
                    .as_str()
                    .or_else(|| self.body["error_description"].as_str())
                    .unwrap_or("")
            ))
        }
    }
}

impl Client {
    pub fn new(base: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Result<Reply> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        Self::send(req).await
    }

    pub async fn post(&self, path: &str, bearer: Option<&str>, body: &Value) -> Result<Reply> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        Self::send(req).await
    }

    pub async fn put(&self, path: &str, bearer: Option<&str>, body: &Value) -> Result<Reply> {
        let mut req = self.http.put(format!("{}{path}", self.base)).json(body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        Self::send(req).await
    }

    /// A GET whose answer is kept as text (for gateway calls, whose bodies are the
    /// upstream's).
    pub async fn get_text(&self, path: &str, bearer: Option<&str>) -> Result<(u16, String)> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let res = req
            .send()
            .await
            .context("cannot reach the Mandate server")?;
        let status = res.status().as_u16();
        Ok((status, res.text().await.context("reading the response")?))
    }

    /// A POST of an `application/x-www-form-urlencoded` form (the OAuth token endpoint).
    pub async fn post_form(&self, path: &str, pairs: &[(&str, &str)]) -> Result<Reply> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        Self::send(req).await
    }

    pub async fn delete(&self, path: &str, bearer: Option<&str>) -> Result<Reply> {
        let mut req = self.http.delete(format!("{}{path}", self.base));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        Self::send(req).await
    }

    async fn send(req: reqwest::RequestBuilder) -> Result<Reply> {
        let res = req.send().await.context(
            "cannot reach the Mandate server (is `mandate serve` running? see --server)",
        )?;
        let status = res.status();
        let text = res.text().await.context("reading the response")?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Reply { status, body })
    }
}
