//! The binary's command line and configuration checks.

use std::process::Command;

fn payrail(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_payrail"))
        .args(args)
        .env("PAYRAIL__HTTP__ADMIN_TOKEN", "cli-test-admin-token-0123")
        .envs(env.iter().copied())
        .output()
        .expect("run payrail");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_is_available_for_every_command() {
    for args in [
        vec!["--help"],
        vec!["node", "--help"],
        vec!["migrate", "--help"],
        vec!["dlq", "list", "--help"],
        vec!["dlq", "replay", "--help"],
    ] {
        let (code, stdout, _) = payrail(&args, &[]);
        assert_eq!(code, 0, "{args:?}");
        assert!(stdout.contains("Usage"), "{args:?}: {stdout}");
    }
}

#[test]
fn a_value_of_the_wrong_type_stops_the_node_naming_the_key() {
    let (code, _, stderr) = payrail(&["node"], &[("PAYRAIL__JOURNAL__PARTITIONS", "six")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("journal.partitions"), "{stderr}");
}

#[test]
fn an_out_of_range_value_stops_the_node_naming_the_key_and_the_range() {
    let (code, _, stderr) = payrail(&["node"], &[("PAYRAIL__JOURNAL__PARTITIONS", "0")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("journal.partitions") && stderr.contains("1..=1024"),
        "{stderr}"
    );
}

#[test]
fn a_lease_safety_margin_past_half_the_lease_is_refused() {
    let (code, _, stderr) = payrail(
        &["node"],
        &[
            ("PAYRAIL__CLUSTER__LEASE_MS", "3000"),
            ("PAYRAIL__CLUSTER__SAFETY_MARGIN_MS", "2000"),
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cluster.safety_margin_ms"), "{stderr}");
}

#[test]
fn bad_brokers_bind_and_database_url_are_refused_with_their_key() {
    for (key, value, name) in [
        ("PAYRAIL__JOURNAL__BROKERS", "no-port", "journal.brokers"),
        ("PAYRAIL__HTTP__BIND", "localhost", "http.bind"),
        ("PAYRAIL__DATABASE__URL", "mysql://x", "database.url"),
        ("PAYRAIL__HTTP__ADMIN_TOKEN", "short", "http.admin_token"),
    ] {
        let (code, _, stderr) = payrail(&["node"], &[(key, value)]);
        assert_eq!(code, 2, "{key}: {stderr}");
        assert!(stderr.contains(name), "{key}: {stderr}");
    }
}

#[test]
fn a_node_beyond_loopback_refuses_to_start_with_a_placeholder_secret() {
    // The shipped config.toml's development secrets; the admin token as shipped too.
    let (code, _, stderr) = payrail(
        &["node"],
        &[
            ("PAYRAIL__HTTP__BIND", "0.0.0.0:18089"),
            ("PAYRAIL__HTTP__ADMIN_TOKEN", "dev-admin-token-change-me"),
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    for variable in [
        "PAYRAIL__HTTP__ADMIN_TOKEN",
        "PAYRAIL__PSP__WEBHOOK_SECRET",
        "PAYRAIL__CLUSTER__SECRET",
    ] {
        assert!(stderr.contains(variable), "{variable}: {stderr}");
    }
    // Only the placeholders are named.
    let (code, _, stderr) = payrail(
        &["node"],
        &[
            ("PAYRAIL__HTTP__BIND", "0.0.0.0:18089"),
            ("PAYRAIL__PSP__WEBHOOK_SECRET", "whsec_7d1f3a5c9e0b2d4f6a8c"),
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("PAYRAIL__CLUSTER__SECRET"), "{stderr}");
    assert!(!stderr.contains("PAYRAIL__PSP__WEBHOOK_SECRET"), "{stderr}");
    assert!(!stderr.contains("PAYRAIL__HTTP__ADMIN_TOKEN"), "{stderr}");
}

#[test]
fn pools_run_refuses_unknown_and_repeated_pools() {
    let (code, _, stderr) = payrail(&["node"], &[("PAYRAIL__POOLS__RUN", "[analytics,bogus]")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("pools.run") && stderr.contains("bogus"),
        "{stderr}"
    );
    let (code, _, stderr) = payrail(&["node"], &[("PAYRAIL__POOLS__RUN", "[ledger,ledger]")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("pools.run: ledger is listed twice"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_key_is_refused() {
    let dir = std::env::temp_dir().join(format!("payrail-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, "[journal]\npartitons = 6\n").unwrap();
    let (code, _, stderr) = payrail(&["node", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("partitons"), "{stderr}");
}

#[test]
fn a_missing_explicit_config_file_is_an_error() {
    let (code, _, stderr) = payrail(&["node", "--config", "/nonexistent/payrail.toml"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn migrate_applies_migrations_idempotently() {
    let url = std::env::var("PAYRAIL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    for _ in 0..2 {
        let (code, stdout, stderr) = payrail(&["migrate"], &[("PAYRAIL__DATABASE__URL", &url)]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("migrations applied"));
    }
}
