//! A fast local OpenAI- and Anthropic-compatible upstream for the load harness
//! (`scripts/bench-gateway`): `bulkhead-fake-llm [ADDR]`, default `127.0.0.1:9100`. It keeps
//! no request log, so memory stays flat under load.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".to_owned())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "fake OpenAI/Anthropic upstream on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, bulkhead_testkit::fake_llm::router(None)).await?;
    Ok(())
}
