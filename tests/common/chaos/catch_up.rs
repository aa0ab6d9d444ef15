//! The pools' catch-up, judged from `GET /v1/admin/consumers` and `GET /v1/admin/journal`.

use super::super::ADMIN_TOKEN;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// `GET /v1/admin/consumers` of the node at `base`.
pub async fn consumers(client: &reqwest::Client, base: &str) -> Result<Vec<Value>, String> {
    let response = client
        .get(format!("{base}/v1/admin/consumers"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .map_err(|e| format!("GET /v1/admin/consumers: {e}"))?;
    let status = response.status().as_u16();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("GET /v1/admin/consumers: {e}"))?;
    if status != 200 {
        return Err(format!("GET /v1/admin/consumers: {status} {body}"));
    }
    Ok(body["data"].as_array().cloned().unwrap_or_default())
}

/// `Ok` when no partition is in journal fallback and the spool is empty (every spooled
/// event replayed into the journal), from `GET /v1/admin/journal`.
pub async fn spool_drained(client: &reqwest::Client, base: &str) -> Result<(), String> {
    let response = client
        .get(format!("{base}/v1/admin/journal"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .map_err(|e| format!("GET /v1/admin/journal: {e}"))?;
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("GET /v1/admin/journal: {e}"))?;
    let empty = body["spool_rows"] == 0
        && body["partitions_in_fallback"]
            .as_array()
            .is_some_and(|a| a.is_empty());
    if empty {
        Ok(())
    } else {
        Err(format!("spool not drained: {body}"))
    }
}

/// Each consumer's name → its partitions, from one sample.
pub fn partitions_by_consumer(sample: &[Value]) -> BTreeMap<String, BTreeSet<i64>> {
    sample
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let parts = c["partitions"]
                .as_array()
                .map(|ps| ps.iter().filter_map(|p| p["partition"].as_i64()).collect())
                .unwrap_or_default();
            (name, parts)
        })
        .collect()
}

/// `Ok` when the pools in `sample` are caught up; otherwise what is missing.
///
/// A pool lists a partition only once it applied (or was handed) a record of it in this
/// process (its worker starts on the first record), so "has its partitions" is judged on
/// the partitions that hold records: for every consumer of `expected`, each partition whose
/// high watermark (the largest any consumer reports; the snapshot projector is manually
/// assigned and reports them all) is above 0 must be listed, and every listed partition
/// must have lag 0. The loads of the fault suite write to every partition after each
/// fault, so a pool without its assignment shows up as a missing partition or a lag.
pub fn caught_up(
    sample: &[Value],
    expected: &BTreeMap<String, BTreeSet<i64>>,
) -> Result<(), String> {
    let mut high: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for c in sample {
        let topic = c["topic"].as_str().unwrap_or_default().to_string();
        for p in c["partitions"].as_array().into_iter().flatten() {
            if let (Some(partition), Some(hw)) =
                (p["partition"].as_i64(), p["high_watermark"].as_i64())
            {
                let e = high.entry((topic.clone(), partition)).or_insert(0);
                *e = (*e).max(hw);
            }
        }
    }
    let mut missing = Vec::new();
    for name in expected.keys() {
        let Some(c) = sample.iter().find(|c| c["name"].as_str() == Some(name)) else {
            missing.push(format!("{name}: absent"));
            continue;
        };
        let short = name.rsplit('.').next().unwrap_or(name);
        let topic = c["topic"].as_str().unwrap_or_default();
        let listed: BTreeMap<i64, i64> = c["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["partition"].as_i64()?, p["lag_records"].as_i64()?)))
            .collect();
        for ((t, partition), hw) in &high {
            if t == topic && *hw > 0 && !listed.contains_key(partition) {
                missing.push(format!(
                    "{short}: partition {partition} (hw {hw}) not listed"
                ));
            }
        }
        for (partition, lag) in &listed {
            if *lag != 0 {
                missing.push(format!("{short}: partition {partition} lag {lag}"));
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// Polls the consumers every 100 ms until [`caught_up`] and the fallback spool is drained
/// (what the pools applied from the spool is in the journal too); the time it took, or the
/// last state seen after `timeout`.
pub async fn wait_caught_up(
    client: &reqwest::Client,
    base: &str,
    expected: &BTreeMap<String, BTreeSet<i64>>,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let last = match consumers(client, base).await {
            Ok(sample) => match caught_up(&sample, expected) {
                Ok(()) => match spool_drained(client, base).await {
                    Ok(()) => return Ok(started.elapsed()),
                    Err(why) => why,
                },
                Err(why) => why,
            },
            Err(e) => e,
        };
        if started.elapsed() > timeout {
            return Err(format!("after {:?}: {last}", started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
