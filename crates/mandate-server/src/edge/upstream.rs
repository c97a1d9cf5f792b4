//! Outbound connections to upstreams: one HTTP client per upstream, no proxies from the
//! environment, no redirects followed, and every resolved address checked by the SSRF
//! guard before a connection is made (so DNS rebinding is caught too).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mandate_gateway::guard;

/// A resolver that drops refused addresses, and fails when none is left.
#[derive(Debug)]
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let ok: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match guard::check(a.ip(), allow_private) {
                    Ok(()) => true,
                    Err(r) => {
                        refused = Some(r);
                        false
                    }
                })
                .collect();
            if ok.is_empty() {
                let why = refused.map_or("no address", guard::Refused::as_str);
                return Err(format!("destination {host} refused: it resolves to {why}").into());
            }
            let it: reqwest::dns::Addrs = Box::new(ok.into_iter());
            Ok(it)
        })
    }
}

/// Checks a URL's host when it is an address literal (the resolver never sees those).
pub fn check_literal(url: &url::Url, allow_private: bool) -> Result<(), String> {
    let ip: Option<IpAddr> = match url.host() {
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        _ => None,
    };
    match ip.map(|ip| guard::check(ip, allow_private)) {
        Some(Err(r)) => Err(format!(
            "{} is {}: refused (set allow_private only for upstreams on a private network)",
            url.host_str().unwrap_or_default(),
            r.as_str()
        )),
        _ => Ok(()),
    }
}

/// A client for one upstream.
pub fn client(
    allow_private: bool,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .read_timeout(read_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .build()
        .map_err(|e| format!("upstream client: {e}"))
}
