//! Measures a running server over a seeded history (issue 14's table): the Histórico's first
//! page, one license as of a random moment, the whole table as of a random moment, a search
//! by customer, type and time range, and check-ins idle and while 32 as-of requests run.
//! Every answer is checked (status 200 and the shape asked for); a wrong answer fails the
//! run. Prints one JSON object of p50/p99 in milliseconds.
//!
//! `cargo run --release --example year_probe -- BASE_URL ADMIN_TOKEN TERMINALS_CSV FROM TO`
//! (FROM and TO: RFC 3339 bounds of the seeded history, for as-of moments and search ranges.)

use std::error::Error;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

struct Terminal {
    cnpj: String,
    hardware_id: String,
    hardware_key: String,
    license: String,
    token: String,
}

fn terminals(path: &str) -> Result<Vec<Terminal>> {
    let mut out = Vec::new();
    for line in std::fs::read_to_string(path)?.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() >= 5 {
            out.push(Terminal {
                cnpj: f[0].into(),
                hardware_id: f[1].into(),
                hardware_key: f[2].into(),
                license: f[3].into(),
                token: f[4].into(),
            });
        }
    }
    Ok(out)
}

/// A tiny deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn percentiles(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    json!({"n": ms.len(), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)})
}

async fn get(client: &reqwest::Client, url: &str, token: &str) -> Result<(f64, Value)> {
    let t = Instant::now();
    let r = client.get(url).bearer_auth(token).send().await?;
    let status = r.status();
    let body: Value = r.json().await?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !status.is_success() {
        return Err(format!("GET {url}: {status} {body}").into());
    }
    Ok((ms, body))
}

async fn check_in(client: &reqwest::Client, base: &str, t: &Terminal, nonce: u64) -> Result<f64> {
    let body = json!({"cnpj": t.cnpj, "product": "easycash", "hardware_id": t.hardware_id,
                      "hardware_key": t.hardware_key, "ip": "192.168.0.10",
                      "nonce": format!("probe-{nonce}")});
    let start = Instant::now();
    let r = client
        .post(format!("{base}/v1/checkin"))
        .bearer_auth(&t.token)
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let answer: Value = r.json().await?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if !status.is_success() || answer.to_string().find("\"VALID\"").is_none() {
        return Err(format!("check-in of {}: {status} {answer}", t.hardware_id).into());
    }
    Ok(ms)
}

fn moment(from: DateTime<Utc>, to: DateTime<Utc>, rng: &mut Rng) -> DateTime<Utc> {
    let span = (to - from).num_seconds().max(1) as usize;
    from + chrono::Duration::seconds(rng.next(span) as i64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: year_probe BASE_URL ADMIN_TOKEN TERMINALS_CSV FROM TO";
    let base = args.get(1).ok_or(usage)?.clone();
    let admin = args.get(2).ok_or(usage)?.clone();
    let terminals = terminals(args.get(3).ok_or(usage)?)?;
    let from: DateTime<Utc> = args.get(4).ok_or(usage)?.parse()?;
    let to: DateTime<Utc> = args.get(5).ok_or(usage)?.parse()?;
    let n = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let pick = |rng: &mut Rng| &terminals[rng.next(terminals.len())];

    let mut history = Vec::new();
    for _ in 0..n("PROBE_HISTORY", 500) {
        let t = pick(&mut rng);
        let (ms, body) = get(
            &client,
            &format!("{base}/v1/licenses/{}/history?limit=20", t.license),
            &admin,
        )
        .await?;
        if body["items"].as_array().is_none_or(|i| i.is_empty()) || body["total"].as_u64().is_none()
        {
            return Err(format!("history of {}: {body}", t.license).into());
        }
        history.push(ms);
    }

    let mut license_as_of = Vec::new();
    for _ in 0..n("PROBE_LICENSE_AS_OF", 200) {
        let t = pick(&mut rng);
        let at = moment(from, to, &mut rng);
        let (ms, body) = get(
            &client,
            &format!(
                "{base}/v1/licenses/{}?as_of={}",
                t.license,
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            &admin,
        )
        .await?;
        if body["license_id"].is_null() {
            return Err(format!("license {} as of {at}: {body}", t.license).into());
        }
        license_as_of.push(ms);
    }

    let mut table_as_of = Vec::new();
    for _ in 0..n("PROBE_TABLE_AS_OF", 10) {
        let at = moment(from, to, &mut rng);
        let (ms, body) = get(
            &client,
            &format!(
                "{base}/v1/licenses?limit=50&as_of={}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            &admin,
        )
        .await?;
        if body["total"].as_u64().is_none_or(|t| t == 0) {
            return Err(format!("table as of {at}: {body}").into());
        }
        table_as_of.push(ms);
    }

    let mut search = Vec::new();
    for _ in 0..n("PROBE_SEARCH", 200) {
        let t = pick(&mut rng);
        let a = moment(from, to, &mut rng);
        let b = a + chrono::Duration::days(30);
        let fmt = |d: DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (ms, body) = get(&client, &format!("{base}/v1/events/search?cnpj={}&type=TerminalCheckedIn&since={}&until={}&limit=100", t.cnpj, fmt(a), fmt(b)), &admin).await?;
        if body["items"].as_array().is_none() {
            return Err(format!("search: {body}").into());
        }
        search.push(ms);
    }

    let mut idle = Vec::new();
    for i in 0..n("PROBE_CHECKINS", 1000) {
        idle.push(check_in(&client, &base, pick(&mut rng), i as u64).await?);
    }
    // 32 as-of requests at once, each a different moment, while check-ins go on.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for k in 0..32u64 {
        let (client, base, admin, stop) =
            (client.clone(), base.clone(), admin.clone(), stop.clone());
        let mut r = Rng(0x9E37_79B9 + k);
        load.push(tokio::spawn(async move {
            let mut done = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = moment(from, to, &mut r);
                get(
                    &client,
                    &format!(
                        "{base}/v1/licenses?limit=50&as_of={}",
                        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                    &admin,
                )
                .await?;
                done += 1;
            }
            Ok::<u64, Box<dyn Error + Send + Sync>>(done)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut busy = Vec::new();
    for i in 0..n("PROBE_CHECKINS", 1000) {
        busy.push(check_in(&client, &base, pick(&mut rng), 1_000_000 + i as u64).await?);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut as_of_done = 0;
    for l in load {
        as_of_done += l.await??;
    }
    println!(
        "{}",
        json!({
            "history_first_page": percentiles(history),
            "license_as_of": percentiles(license_as_of),
            "table_as_of": percentiles(table_as_of),
            "search_customer_type_time": percentiles(search),
            "checkin_idle": percentiles(idle),
            "checkin_during_32_as_of": percentiles(busy),
            "as_of_answered_meanwhile": as_of_done,
        })
    );
    Ok(())
}
