//! The fake Slack, Jira and GitHub for the tool-call load harness (`scripts/bench-tools`):
//! `bulkhead-fake-saas [ADDR] [TOKEN=TEAM...]`, default `127.0.0.1:9200` and one token
//! `xoxb-bench` for workspace `T_BENCH`.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9200".to_owned());
    let mut tokens: Vec<(String, String)> = args
        .filter_map(|pair| {
            pair.split_once('=')
                .map(|(t, w)| (t.to_owned(), w.to_owned()))
        })
        .collect();
    if tokens.is_empty() {
        tokens.push(("xoxb-bench".into(), "T_BENCH".into()));
    }
    let pairs: Vec<(&str, &str)> = tokens
        .iter()
        .map(|(t, w)| (t.as_str(), w.as_str()))
        .collect();
    let fake = bulkhead_testkit::fake_saas::FakeSaas::start_on(&addr, &pairs).await?;
    eprintln!("fake Slack/Jira/GitHub on {}", fake.base);
    std::future::pending::<()>().await;
    Ok(())
}
