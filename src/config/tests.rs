use super::*;

#[test]
fn debug_output_holds_no_secret() {
    let mut config = Config::default();
    config.http.admin_token = "admin-token-AAAA-0123456789".into();
    config.psp.webhook_secret = "psp-secret-BBBB-0123456789".into();
    config.cluster.secret = "cluster-secret-CCCC-0123456789".into();
    config.database.url =
        "postgres://payrail:db-pass-DDDD@db.internal:5432/payrail?sslmode=require&password=db-pass-EEEE"
            .into();
    let shown = format!("{config:?}");
    for secret in ["AAAA", "BBBB", "CCCC", "DDDD", "EEEE"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("db.internal:5432"), "{shown}");
}

fn shipped() -> Config {
    Config::load(Path::new("config.toml"), true).expect("the shipped config.toml loads")
}

#[test]
fn the_shipped_secrets_are_placeholders() {
    let config = shipped();
    for value in [
        &config.http.admin_token,
        &config.psp.webhook_secret,
        &config.cluster.secret,
    ] {
        assert!(is_placeholder_secret(value), "{} is usable", value.len());
    }
    assert!(is_placeholder_secret(&ClusterOptions::default().secret));
}

#[test]
fn the_shipped_secrets_are_refused_beyond_loopback_naming_each_key() {
    let mut config = shipped();
    config.http.bind = "0.0.0.0:8080".into();
    let refusal = config.validate().expect_err("placeholders beyond loopback");
    for name in [
        "http.admin_token (set PAYRAIL__HTTP__ADMIN_TOKEN)",
        "psp.webhook_secret (set PAYRAIL__PSP__WEBHOOK_SECRET)",
        "cluster.secret (set PAYRAIL__CLUSTER__SECRET)",
    ] {
        assert!(refusal.contains(name), "{name}: {refusal}");
    }
}

#[test]
fn real_secrets_pass_beyond_loopback_and_placeholders_on_loopback() {
    let mut config = shipped();
    assert_eq!(config.validate(), Ok(()), "loopback: development values");
    config.http.bind = "0.0.0.0:8080".into();
    config.http.admin_token = "3f9c1a7e5b2d4c6a8e0f1b3d5a7c9e1f".into();
    config.psp.webhook_secret = "whsec_8b1d3f5a7c9e0b2d4f6a8c0e".into();
    config.cluster.secret = "c1d3f5a7b9e0c2d4f6a8b0e2d4f6a8c0".into();
    assert_eq!(config.validate(), Ok(()));
    config.cluster.secret = "cluster-secret-CHANGE_ME-0123".into();
    assert!(config.validate().is_err(), "marked change_me in any case");
}

#[test]
fn the_idle_timeout_must_exceed_the_command_and_forward_timeouts() {
    let mut config = shipped();
    assert_eq!(config.validate(), Ok(()));
    config.actors.command_timeout_ms = config.http.idle_timeout_ms;
    let refusal = config.validate().expect_err("idle == command timeout");
    assert!(
        refusal.contains("http.idle_timeout_ms") && refusal.contains("actors.command_timeout_ms"),
        "{refusal}"
    );
    config.actors.command_timeout_ms = 8_000;
    config.http.idle_timeout_ms = 5_000;
    let refusal = config.validate().expect_err("idle < command timeout");
    assert!(refusal.contains("actors.command_timeout_ms"), "{refusal}");
    config.http.idle_timeout_ms = 9_000;
    config.cluster.forward_timeout_ms = 9_000;
    let refusal = config.validate().expect_err("idle == forward timeout");
    assert!(
        refusal.contains("http.idle_timeout_ms") && refusal.contains("cluster.forward_timeout_ms"),
        "{refusal}"
    );
    config.cluster.forward_timeout_ms = 8_999;
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn the_shipped_server_limits_are_the_defaults() {
    let config = shipped();
    let defaults = payrail_http::HttpOptions::default();
    assert_eq!(
        config.http.header_read_timeout_ms,
        defaults.header_read_timeout_ms
    );
    assert_eq!(config.http.idle_timeout_ms, defaults.idle_timeout_ms);
    assert_eq!(config.http.max_connections, defaults.max_connections);
}

#[test]
fn a_database_url_is_shown_without_its_password() {
    assert_eq!(
        redact_url("postgres://u:p4ss@h:5432/db"),
        "postgres://u:<redacted>@h:5432/db"
    );
    assert_eq!(
        redact_url("postgres://postgres@127.0.0.1:5432/test"),
        "postgres://postgres@127.0.0.1:5432/test"
    );
    assert_eq!(
        redact_url("postgres://h/db?password=p4ss&sslmode=require"),
        "postgres://h/db?password=<redacted>&sslmode=require"
    );
}
