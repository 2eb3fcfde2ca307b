//! The gRPC client side of the CLI (`eval --server`, `bench-serve`): connecting, and the bearer
//! token from `XSELL_TOKEN` when the server needs one.

use std::sync::OnceLock;

use anyhow::Context;
use tonic::transport::{Channel, Endpoint};
use xsell_proto::v1::cross_sell_client::CrossSellClient;

/// The ranking client.
pub type Client = CrossSellClient<Channel>;

/// `host:port` or a URL as an endpoint URL.
pub fn url(server: &str) -> String {
    if server.contains("://") { server.to_owned() } else { format!("http://{server}") }
}

/// A channel to `server` (TCP_NODELAY on, as the server's side).
pub async fn channel(server: &str) -> anyhow::Result<Channel> {
    let url = url(server);
    let ep = Endpoint::from_shared(url.clone()).with_context(|| format!("{url} is not a valid address"))?.tcp_nodelay(true);
    ep.connect().await.with_context(|| format!("connecting to {url}"))
}

/// A ranking client for `server`.
pub async fn connect(server: &str) -> anyhow::Result<Client> {
    Ok(CrossSellClient::new(channel(server).await?).max_decoding_message_size(256 << 20))
}

fn token() -> Option<&'static tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    static TOKEN: OnceLock<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>> = OnceLock::new();
    TOKEN.get_or_init(|| std::env::var("XSELL_TOKEN").ok().and_then(|t| format!("Bearer {}", t.trim()).parse().ok())).as_ref()
}

/// A request carrying `authorization: Bearer $XSELL_TOKEN` when that variable is set.
pub fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token() {
        req.metadata_mut().insert("authorization", t.clone());
    }
    req
}
