//! Stripe-style webhook signatures: header `t=<unix>,v1=<hex>[,v1=<hex>…]`, where each `v1`
//! is HMAC-SHA256 over `"<t>.<raw body>"` with the shared secret. Used to verify PSP
//! callbacks and to sign merchant webhooks. It knows no other payrail crate.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The default tolerance between the signed timestamp and now, in seconds.
pub const DEFAULT_TOLERANCE_S: i64 = 300;

/// At most this many `v1` entries are accepted in one header: a sender rolling its secret
/// needs two; hundreds would only make each request cost hundreds of HMAC comparisons.
pub const MAX_SIGNATURES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is missing")]
    Missing,
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature timestamp is outside the tolerance")]
    Stale,
    #[error("no signature matches the body")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `v1` signature (hex) of `body` at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hex::encode(
        mac(secret.as_bytes(), timestamp, body)
            .finalize()
            .into_bytes(),
    )
}

/// A complete header value for `body` signed at `timestamp`.
pub fn header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, body))
}

/// Verifies `header` for `body`: some `v1` must match (compared in constant time) and `t`
/// must be within `tolerance_s` of `now`.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
    tolerance_s: i64,
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key {
            "t" => {
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed)?,
                )
            }
            "v1" => {
                if candidates.len() == MAX_SIGNATURES {
                    return Err(SignatureError::Malformed);
                }
                candidates.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?)
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // `abs_diff` cannot overflow, whatever `t` the sender wrote (i64::MIN included); a
    // negative tolerance accepts nothing.
    let tolerance = u64::try_from(tolerance_s).unwrap_or(0);
    if now.abs_diff(timestamp) > tolerance {
        return Err(SignatureError::Stale);
    }
    let expected = mac(secret.as_bytes(), timestamp, body);
    if candidates
        .iter()
        .any(|candidate| expected.clone().verify_slice(candidate).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_body_verifies() {
        let h = header("whsec", 1_000, b"{}");
        assert_eq!(verify(Some(&h), b"{}", "whsec", 300, 1_100), Ok(()));
    }

    #[test]
    fn any_matching_v1_is_enough() {
        let good = sign("whsec", 1_000, b"x");
        let h = format!("t=1000,v1={},v1={good}", "00".repeat(32));
        assert_eq!(verify(Some(&h), b"x", "whsec", 300, 1_000), Ok(()));
    }

    #[test]
    fn a_timestamp_at_the_ends_of_the_range_is_stale_not_a_panic() {
        let body = b"{}";
        for t in [i64::MIN, i64::MAX] {
            let h = format!("t={t},v1={}", sign("whsec", t, body));
            assert_eq!(
                verify(Some(&h), body, "whsec", 300, 1_000),
                Err(SignatureError::Stale),
                "t={t}"
            );
        }
    }

    #[test]
    fn a_header_with_more_v1_entries_than_the_cap_is_malformed() {
        let good = sign("whsec", 1_000, b"x");
        let filler = format!("v1={},", "00".repeat(32)).repeat(MAX_SIGNATURES);
        let h = format!("t=1000,{filler}v1={good}");
        assert_eq!(
            verify(Some(&h), b"x", "whsec", 300, 1_000),
            Err(SignatureError::Malformed)
        );
        // Up to the cap, any matching entry is still enough.
        let filler = format!("v1={},", "00".repeat(32)).repeat(MAX_SIGNATURES - 1);
        let h = format!("t=1000,{filler}v1={good}");
        assert_eq!(verify(Some(&h), b"x", "whsec", 300, 1_000), Ok(()));
    }

    #[test]
    fn tampered_body_wrong_secret_stale_and_missing_are_refused() {
        let h = header("whsec", 1_000, b"{}");
        assert_eq!(
            verify(Some(&h), b"{ }", "whsec", 300, 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&h), b"{}", "other", 300, 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&h), b"{}", "whsec", 300, 1_301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(None, b"{}", "whsec", 300, 1_000),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some("t=abc,v1=00"), b"{}", "whsec", 300, 1_000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(Some("t=1000"), b"{}", "whsec", 300, 1_000),
            Err(SignatureError::Malformed)
        );
    }
}
