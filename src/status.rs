//! `payrail status`: asks a node for `GET /v1/admin/status` and prints it as tables (or the
//! JSON with `--json`). Exit status: 0 ready, 1 not ready, 2 no status (unreachable,
//! refused, or not a status answer).

use crate::config::Config;
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The node's base URL. Default: http://<http.bind> (0.0.0.0 and [::] asked on loopback).
    #[arg(long)]
    url: Option<String>,
    /// Print the node's JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Give up on the node after this long (ms).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

pub const EXIT_NOT_READY: u8 = 1;
pub const EXIT_NO_STATUS: u8 = 2;

/// The URL `http.bind` is reached at from this host.
fn default_url(bind: &str) -> String {
    let local = match bind.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => format!("127.0.0.1:{}", addr.port()),
        _ => bind.to_string(),
    };
    format!("http://{local}")
}

pub async fn run(config: &Config, args: &StatusArgs) -> ExitCode {
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| default_url(&config.http.bind));
    let url = format!("{}/v1/admin/status", base.trim_end_matches('/'));
    let status = match fetch(&url, &config.http.admin_token, args.timeout_ms).await {
        Ok(status) => status,
        Err(message) => {
            eprintln!("payrail status: {message}");
            return ExitCode::from(EXIT_NO_STATUS);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&status) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("payrail status: {e}");
                return ExitCode::from(EXIT_NO_STATUS);
            }
        }
    } else {
        print!("{}", render(&status));
    }
    exit_code(&status)
}

fn exit_code(status: &Value) -> ExitCode {
    if status["ready"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_READY)
    }
}

async fn fetch(url: &str, token: &str, timeout_ms: u64) -> Result<Value, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let response = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("{url} unreachable: {e}"))?;
    let code = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("{url} answered HTTP {code} without JSON: {e}"))?;
    if !code.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        return Err(format!("{url} answered HTTP {code}: {message}"));
    }
    if body["object"] != "node_status" {
        return Err(format!("{url} did not answer a node_status object"));
    }
    Ok(body)
}

/// A value as a cell: strings bare, null as "-".
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    if rows.is_empty() {
        out.push_str("  (none)\n");
    }
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn render(s: &Value) -> String {
    let mut out = String::new();
    let node = match &s["node_id"] {
        Value::Null => "single node (not clustered)".to_string(),
        id => text(id),
    };
    let ready = if s["ready"] == true { "yes" } else { "NO" };
    let j = &s["journal"];
    let spool = &s["spool"];
    let spool_text = match &spool["error"] {
        Value::Null => format!(
            "{} / {} rows",
            text(&spool["rows"]),
            text(&spool["max_rows"])
        ),
        error => text(error),
    };
    out.push_str("Health\n");
    out.push_str(&table(
        &["", ""],
        &[
            vec!["node".into(), node],
            vec!["ready".into(), ready.into()],
            vec!["database".into(), text(&s["database"])],
            vec!["journal".into(), text(&j["state"])],
            vec![
                "breaker".into(),
                format!(
                    "{} ({} transitions)",
                    text(&j["breaker"]),
                    text(&j["breaker_transitions"])
                ),
            ],
            vec!["spool".into(), spool_text],
        ],
    ));
    for reason in s["reasons"].as_array().into_iter().flatten() {
        out.push_str(&format!("  not ready: {}\n", text(reason)));
    }

    let p = &s["partitions"];
    out.push_str(&format!(
        "\nPartitions (owned here: {} of {})\n",
        text(&p["owned"]),
        text(&p["count"])
    ));
    let owners: Vec<Vec<String>> = p["owners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            vec![
                text(&o["partition"]),
                if o["owner"].is_null() {
                    "this node".into()
                } else {
                    text(&o["owner"])
                },
                text(&o["epoch"]),
                text(&o["held"]),
                text(&o["this_node"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &["PARTITION", "OWNER", "EPOCH", "HELD", "HERE"],
        &owners,
    ));
    if !p["owners_error"].is_null() {
        out.push_str(&format!("  error: {}\n", text(&p["owners_error"])));
    }

    let c = &s["consumers"];
    out.push_str("\nConsumers' lag\n");
    let lag: Vec<Vec<String>> = c["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            vec![
                text(&c["name"]),
                text(&c["topic"]),
                text(&c["lag_records"]),
                text(&c["applied_since_start"]),
            ]
        })
        .collect();
    out.push_str(&table(&["CONSUMER", "TOPIC", "LAG", "APPLIED"], &lag));
    if !c["error"].is_null() {
        out.push_str(&format!("  error: {}\n", text(&c["error"])));
    }

    let d = &s["dead_letters"];
    out.push_str(&format!(
        "\nDead letters (total {}, not replayed {})\n",
        text(&d["total"]),
        text(&d["pending"])
    ));
    let letters: Vec<Vec<String>> = d["recent"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            vec![
                text(&l["created_at"]),
                text(&l["consumer"]),
                text(&l["partition"]),
                text(&l["offset"]),
                text(&l["event_type"]),
                text(&l["error"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "CREATED",
            "CONSUMER",
            "PARTITION",
            "OFFSET",
            "EVENT TYPE",
            "ERROR",
        ],
        &letters,
    ));
    if !d["error"].is_null() {
        out.push_str(&format!("  error: {}\n", text(&d["error"])));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let out = table(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["b".into(), "y".into()],
            ],
        );
        assert_eq!(out, "  A          LONGER\n  wide cell  x\n  b          y\n");
    }

    #[test]
    fn not_ready_exits_1_and_the_default_url_is_on_loopback() {
        assert_eq!(
            exit_code(&serde_json::json!({"ready": true})),
            ExitCode::SUCCESS
        );
        assert_eq!(
            exit_code(&serde_json::json!({"ready": false})),
            ExitCode::from(EXIT_NOT_READY)
        );
        assert_eq!(
            exit_code(&serde_json::json!({})),
            ExitCode::from(EXIT_NOT_READY)
        );
        assert_eq!(default_url("0.0.0.0:8080"), "http://127.0.0.1:8080");
        assert_eq!(default_url("127.0.0.1:9000"), "http://127.0.0.1:9000");
    }
}
