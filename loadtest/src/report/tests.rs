use super::*;

fn info() -> RunInfo {
    RunInfo {
        command: "loadtest".into(),
        scenario: "create".into(),
        mode: "closed".into(),
        target: "http://127.0.0.1:8080".into(),
        connections: 4,
        target_rate_per_s: None,
        warmup_s: 1,
        duration_s: 2,
        max_requests: None,
        skew: Some(0.0),
    }
}

fn sample() -> Report {
    let mut a = Recorder::default();
    let mut b = Recorder::default();
    a.ok(Phase::Warmup, "create", 0, Duration::from_millis(50));
    a.error(Phase::Warmup, "create", ErrorKind::Connect);
    for i in 0..98u64 {
        a.ok(
            Phase::Measure,
            "create",
            (i % 2) as usize,
            Duration::from_micros(1_000 + i),
        );
    }
    b.ok(Phase::Measure, "create", 1, Duration::from_millis(40));
    b.ok(Phase::Measure, "create", 1, Duration::from_millis(80));
    b.error(Phase::Measure, "create", ErrorKind::Http(503));
    b.error(Phase::Measure, "create", ErrorKind::Http(503));
    b.error(Phase::Measure, "create", ErrorKind::Timeout);
    a.merge(&b);
    Report::build(
        info(),
        &a,
        Duration::from_secs(2),
        &["mer_a".to_string(), "mer_b".to_string()],
        BTreeMap::new(),
    )
}

#[test]
fn report_counts_phases_and_errors_by_kind() {
    let r = sample();
    assert_eq!(r.requests, 103);
    assert_eq!(r.ok, 100);
    assert_eq!(r.errors, 3);
    assert_eq!(r.errors_by_kind["http_503"], 2);
    assert_eq!(r.errors_by_kind["timeout"], 1);
    assert!((r.throughput_per_s - 50.0).abs() < 1e-9, "100 ok in 2 s");
    assert_eq!(r.warmup.requests, 2);
    assert_eq!(r.warmup.ok, 1);
    assert_eq!(r.total.ok_by_kind["create"], 101);
    assert_eq!(r.merchants[0].ok, 1 + 49);
    assert_eq!(r.merchants[1].ok, 49 + 2);
    let l = &r.latency_us;
    assert_eq!(l.count, 100);
    assert!(l.p50 >= 1_000 && l.p50 < 1_100, "{}", l.p50);
    assert!(
        l.max >= 80_000 && l.max < 80_100,
        "warm-up's 50 ms is excluded but 80 ms is in"
    );
    assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
}

#[test]
fn json_has_the_documented_shape() {
    let v: serde_json::Value = serde_json::from_str(&sample().to_json().unwrap()).unwrap();
    for key in [
        "command",
        "scenario",
        "mode",
        "target",
        "connections",
        "warmup_s",
        "duration_s",
        "measured_s",
        "requests",
        "ok",
        "errors",
        "errors_by_kind",
        "throughput_per_s",
        "latency_us",
        "kinds",
        "warmup",
        "total",
        "merchants",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert!(v["throughput_per_s"].as_f64().unwrap() > 0.0);
    for p in ["count", "min", "mean", "p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_us"][p].is_number(), "latency_us.{p}");
        assert!(v["kinds"]["create"]["latency_us"][p].is_number());
    }
    assert!(v["latency_us"]["p99"].as_u64().unwrap() >= 1_000);
    assert_eq!(v["errors_by_kind"]["http_503"], 2);
    assert_eq!(v["kinds"]["create"]["errors_by_kind"]["timeout"], 1);
    assert_eq!(v["total"]["ok_by_kind"]["create"], 101);
    assert_eq!(v["merchants"][1]["id"], "mer_b");
    assert!(v["target_rate_per_s"].is_null());
}

#[test]
fn empty_run_reports_zeros_not_nan() {
    let r = Report::build(
        info(),
        &Recorder::default(),
        Duration::ZERO,
        &[],
        BTreeMap::new(),
    );
    assert_eq!(r.throughput_per_s, 0.0);
    assert_eq!(r.latency_us, Percentiles::default());
    assert!(r.to_json().is_ok());
    assert!(r.to_text().contains("requests 0"));
}
