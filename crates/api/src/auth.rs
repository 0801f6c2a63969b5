//! Authentication: who may call, and whether this request is fresh.
//!
//! Holds the configured SecretId/SecretKey pairs and an in-memory nonce cache. A nonce is
//! remembered together with its SecretId and timestamp; once the timestamp has left the
//! accepted window the request would be refused as expired anyway, so the entry is forgotten.
//!
//! # Limitations
//! - The nonce cache is per process: two nodes behind one address would each accept one replay.

use std::collections::HashMap;
use std::sync::Mutex;

use nimbus_sign::V1Method;

use crate::error::ApiError;

/// One configured credential.
#[derive(Clone)]
pub struct Credential {
    /// Public key id (`AKID…`).
    pub secret_id: String,
    /// The signing key. Never logged.
    pub secret_key: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("secret_id", &self.secret_id)
            .finish_non_exhaustive()
    }
}

/// A signature v1 request as the verifier needs it.
pub struct V1Request<'a> {
    /// HTTP method.
    pub http_method: &'a str,
    /// The `Host` header as received.
    pub host: &'a str,
    /// Request path.
    pub path: &'a str,
    /// All decoded parameters, `Signature` included.
    pub params: &'a [(String, String)],
    /// Leave POST values starting with `@` out (legacy path).
    pub skip_at_values: bool,
}

/// Credentials plus replay protection.
pub struct Authenticator {
    credentials: HashMap<String, String>,
    nonces: Mutex<NonceCache>,
}

impl Authenticator {
    /// Legacy API 2.0: timestamps may be two hours off.
    pub const LEGACY_WINDOW_SECS: i64 = 2 * 60 * 60;
    /// API 3.0: timestamps may be five minutes off.
    pub const API3_WINDOW_SECS: i64 = 5 * 60;

    /// Creates an authenticator for these credentials.
    pub fn new(credentials: Vec<Credential>) -> Authenticator {
        Authenticator {
            credentials: credentials
                .into_iter()
                .map(|c| (c.secret_id, c.secret_key))
                .collect(),
            nonces: Mutex::new(NonceCache::default()),
        }
    }

    /// Verifies a signature v1 request; returns the caller's SecretId.
    ///
    /// Order of checks: required parameters, known SecretId, signature, time window, nonce. The
    /// nonce is only remembered once everything else passed, so a forged request cannot burn
    /// a legitimate client's nonce.
    ///
    /// # Errors
    /// `MissingParameter`, `InvalidParameter`, `SecretIdNotFound`, `SignatureFailure`,
    /// `SignatureExpire`, `NonceReplay`.
    pub fn verify_v1(
        &self,
        request: &V1Request<'_>,
        now: i64,
        window_secs: i64,
    ) -> Result<String, ApiError> {
        let get = |name: &str| {
            request
                .params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let require =
            |name: &str| get(name).ok_or_else(|| ApiError::MissingParameter(name.to_owned()));
        let secret_id = require("SecretId")?;
        let signature = require("Signature")?;
        let timestamp: i64 = require("Timestamp")?.parse().map_err(|_| {
            ApiError::invalid(
                "InvalidParameterValue.Timestamp",
                "Timestamp must be Unix seconds",
            )
        })?;
        let nonce: u64 = require("Nonce")?.parse().map_err(|_| {
            ApiError::invalid(
                "InvalidParameterValue.Nonce",
                "Nonce must be a positive integer",
            )
        })?;
        let secret_key = self
            .credentials
            .get(secret_id)
            .ok_or_else(|| ApiError::SecretIdNotFound(secret_id.to_owned()))?;

        let method = V1Method::from_param(get("SignatureMethod"));
        let signed: Vec<(String, String)> = request
            .params
            .iter()
            .filter(|(k, _)| k != "Signature")
            .cloned()
            .collect();
        let valid = nimbus_sign::v1_verify(
            method,
            secret_key,
            request.http_method,
            request.host,
            request.path,
            &signed,
            request.skip_at_values,
            signature,
        );
        if !valid {
            return Err(ApiError::SignatureFailure);
        }
        if (now - timestamp).abs() > window_secs {
            return Err(ApiError::SignatureExpire {
                timestamp,
                now,
                window_secs,
            });
        }
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        if !nonces.insert(secret_id, timestamp, nonce, now - window_secs) {
            return Err(ApiError::NonceReplay(nonce));
        }
        Ok(secret_id.to_owned())
    }
}

/// A TC3-HMAC-SHA256 request as the verifier needs it.
pub struct Tc3Request<'a> {
    /// HTTP method, as received.
    pub http_method: &'a str,
    /// Path, as received.
    pub path: &'a str,
    /// Raw query string (empty for POST, whose query is not signed).
    pub raw_query: &'a str,
    /// `(lowercase name, value)` of every received header.
    pub headers: &'a [(String, String)],
    /// Raw body.
    pub body: &'a [u8],
}

impl Tc3Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Authenticator {
    /// Verifies a TC3-HMAC-SHA256 request; returns the caller's SecretId.
    ///
    /// Service and date come from the credential scope as the client wrote it (the Node SDK
    /// writes `127` as the service of an IP endpoint). The `Host` header is tried as received
    /// (tccli signs `http://127.0.0.1:9000` verbatim) and then without its port (the Node SDK
    /// signs the bare host name); header values are tried lowercased, as the official
    /// documentation signs them, and as sent.
    ///
    /// # Errors
    /// `InvalidAuthorization`, `MissingParameter` (no `X-TC-Timestamp`), `SecretIdNotFound`,
    /// `SignatureFailure`, `SignatureExpire`.
    pub fn verify_tc3(&self, request: &Tc3Request<'_>, now: i64) -> Result<String, ApiError> {
        let header = request.header("authorization").unwrap_or("");
        let authorization = nimbus_sign::parse_tc3_authorization(header)
            .map_err(|e| ApiError::InvalidAuthorization(e.to_string()))?;
        let timestamp: i64 = request
            .header("x-tc-timestamp")
            .ok_or_else(|| ApiError::MissingParameter("X-TC-Timestamp".to_owned()))?
            .trim()
            .parse()
            .map_err(|_| {
                ApiError::invalid(
                    "InvalidParameterValue.Timestamp",
                    "X-TC-Timestamp must be Unix seconds",
                )
            })?;
        let secret_key = self
            .credentials
            .get(&authorization.secret_id)
            .ok_or_else(|| ApiError::SecretIdNotFound(authorization.secret_id.clone()))?;

        let unsigned = request
            .header("x-tc-content-sha256")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("UNSIGNED-PAYLOAD"));
        let payload = if unsigned {
            nimbus_sign::Tc3Payload::Unsigned
        } else {
            nimbus_sign::Tc3Payload::Bytes(request.body)
        };
        let valid = host_variants(request.header("host").unwrap_or(""))
            .iter()
            .any(|host| {
                let mut signed = Vec::with_capacity(authorization.signed_headers.len());
                for name in &authorization.signed_headers {
                    let value = if name == "host" {
                        Some(host.as_str())
                    } else {
                        request.header(name)
                    };
                    let Some(value) = value else { return false };
                    signed.push((name.clone(), value.to_owned()));
                }
                let canonical = nimbus_sign::Tc3Request {
                    method: request.http_method,
                    path: request.path,
                    raw_query: request.raw_query,
                    headers: &signed,
                    payload,
                };
                [
                    nimbus_sign::Tc3HeaderValues::AsSent,
                    nimbus_sign::Tc3HeaderValues::Lowercased,
                ]
                .into_iter()
                .any(|values| {
                    let text = nimbus_sign::tc3_canonical_request_with(&canonical, values);
                    let to_sign = nimbus_sign::tc3_string_to_sign(
                        timestamp,
                        &authorization.date,
                        &authorization.service,
                        &text,
                    );
                    nimbus_sign::tc3_verify(
                        secret_key,
                        &authorization.date,
                        &authorization.service,
                        &to_sign,
                        &authorization.signature,
                    )
                })
            });
        if !valid {
            return Err(ApiError::SignatureFailure);
        }
        // Every client derives the scope's date from the same timestamp; a key derived for
        // another day must not sign today's requests.
        if authorization.date != nimbus_sign::utc_date(timestamp) {
            return Err(ApiError::SignatureFailure);
        }
        if (now - timestamp).abs() > Self::API3_WINDOW_SECS {
            return Err(ApiError::SignatureExpire {
                timestamp,
                now,
                window_secs: Self::API3_WINDOW_SECS,
            });
        }
        Ok(authorization.secret_id)
    }
}

/// The `Host` header as received, and without its port when it has one.
fn host_variants(host: &str) -> Vec<String> {
    let mut variants = vec![host.to_owned()];
    if let Some((bare, port)) = host.rsplit_once(':')
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && !bare.ends_with(':')
    {
        variants.push(bare.to_owned());
    }
    variants
}

/// Nonces seen within the window, keyed by (SecretId, timestamp, nonce). Keying on the
/// timestamp too keeps clients with small nonce ranges (the Node SDK draws from 0..65535)
/// from colliding with their own earlier requests.
#[derive(Default)]
struct NonceCache {
    seen: HashMap<(String, i64, u64), ()>,
    /// Size at which the next insert first sweeps out expired entries.
    sweep_at: usize,
}

impl NonceCache {
    /// Remembers a nonce; returns false if it was already there. Entries with timestamps
    /// before `oldest_valid` are swept out when the cache has doubled since the last sweep,
    /// which keeps the amortised cost per request constant.
    fn insert(&mut self, secret_id: &str, timestamp: i64, nonce: u64, oldest_valid: i64) -> bool {
        if self.seen.len() >= self.sweep_at {
            self.seen.retain(|(_, ts, _), ()| *ts >= oldest_valid);
            self.sweep_at = (self.seen.len() * 2).max(1024);
        }
        self.seen
            .insert((secret_id.to_owned(), timestamp, nonce), ())
            .is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "secretkey";

    fn signed(params: &[(&str, &str)], key: &str) -> Vec<(String, String)> {
        let mut params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let text = nimbus_sign::v1_string_to_sign(
            "GET",
            "127.0.0.1:9000",
            "/v2/index.php",
            &params,
            false,
        );
        params.push((
            "Signature".into(),
            nimbus_sign::v1_signature(V1Method::HmacSha1, key, &text),
        ));
        params
    }

    fn verify(
        auth: &Authenticator,
        params: &[(String, String)],
        now: i64,
    ) -> Result<String, ApiError> {
        let request = V1Request {
            http_method: "GET",
            host: "127.0.0.1:9000",
            path: "/v2/index.php",
            params,
            skip_at_values: false,
        };
        auth.verify_v1(&request, now, Authenticator::LEGACY_WINDOW_SECS)
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(vec![Credential {
            secret_id: "AKID1".into(),
            secret_key: KEY.into(),
        }])
    }

    fn base(nonce: &str, timestamp: &str) -> Vec<(&'static str, String)> {
        vec![
            ("Action", "ListFunctions".to_owned()),
            ("Nonce", nonce.to_owned()),
            ("SecretId", "AKID1".to_owned()),
            ("Timestamp", timestamp.to_owned()),
        ]
    }

    fn sign_base(nonce: &str, timestamp: &str, key: &str) -> Vec<(String, String)> {
        let owned = base(nonce, timestamp);
        let borrowed: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        signed(&borrowed, key)
    }

    #[test]
    fn accepts_a_fresh_signed_request_once() {
        let auth = authenticator();
        let params = sign_base("42", "1000", KEY);
        assert_eq!(verify(&auth, &params, 1000).expect("valid"), "AKID1");
        assert!(matches!(
            verify(&auth, &params, 1001),
            Err(ApiError::NonceReplay(42))
        ));
        // The same nonce with another timestamp is another request.
        let later = sign_base("42", "1005", KEY);
        assert!(verify(&auth, &later, 1005).is_ok());
    }

    #[test]
    fn rejects_wrong_key_unknown_id_and_stale_time() {
        let auth = authenticator();
        let wrong = sign_base("1", "1000", "otherkey");
        assert!(matches!(
            verify(&auth, &wrong, 1000),
            Err(ApiError::SignatureFailure)
        ));

        let mut unknown = sign_base("2", "1000", KEY);
        unknown
            .iter_mut()
            .filter(|(k, _)| k == "SecretId")
            .for_each(|(_, v)| *v = "AKID9".into());
        assert!(matches!(
            verify(&auth, &unknown, 1000),
            Err(ApiError::SecretIdNotFound(_))
        ));

        let stale = sign_base("3", "1000", KEY);
        let later = 1000 + Authenticator::LEGACY_WINDOW_SECS + 1;
        assert!(matches!(
            verify(&auth, &stale, later),
            Err(ApiError::SignatureExpire { .. })
        ));
    }

    #[test]
    fn a_forged_request_does_not_burn_the_nonce() {
        let auth = authenticator();
        let forged = sign_base("7", "1000", "otherkey");
        assert!(verify(&auth, &forged, 1000).is_err());
        let genuine = sign_base("7", "1000", KEY);
        assert!(verify(&auth, &genuine, 1000).is_ok());
    }

    #[test]
    fn reports_missing_parameters() {
        let auth = authenticator();
        let mut params = sign_base("1", "1000", KEY);
        params.retain(|(k, _)| k != "Nonce");
        match verify(&auth, &params, 1000) {
            Err(ApiError::MissingParameter(name)) => assert_eq!(name, "Nonce"),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn tc3_headers(
        host: &str,
        signed_host: &str,
        timestamp: i64,
        key: &str,
    ) -> Vec<(String, String)> {
        let body = br#"{"FunctionName":"f"}"#;
        let signed = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("host".to_owned(), signed_host.to_owned()),
        ];
        let request = nimbus_sign::Tc3Request {
            method: "POST",
            path: "/",
            raw_query: "",
            headers: &signed,
            payload: nimbus_sign::Tc3Payload::Bytes(body),
        };
        let authorization =
            nimbus_sign::tc3_authorization("AKID1", key, timestamp, "scf", &request);
        vec![
            ("authorization".to_owned(), authorization),
            ("content-type".to_owned(), "application/json".to_owned()),
            ("host".to_owned(), host.to_owned()),
            ("x-tc-timestamp".to_owned(), timestamp.to_string()),
        ]
    }

    fn verify_tc3(
        auth: &Authenticator,
        headers: &[(String, String)],
        now: i64,
    ) -> Result<String, ApiError> {
        let request = Tc3Request {
            http_method: "POST",
            path: "/",
            raw_query: "",
            headers,
            body: br#"{"FunctionName":"f"}"#,
        };
        auth.verify_tc3(&request, now)
    }

    #[test]
    fn tc3_accepts_the_host_as_sent_or_without_its_port() {
        let auth = authenticator();
        let as_sent = tc3_headers("127.0.0.1:9000", "127.0.0.1:9000", 1000, KEY);
        assert_eq!(verify_tc3(&auth, &as_sent, 1000).expect("valid"), "AKID1");
        let bare = tc3_headers("127.0.0.1:9000", "127.0.0.1", 1000, KEY);
        assert!(verify_tc3(&auth, &bare, 1000).is_ok());
        let tccli = tc3_headers("http://127.0.0.1:9000", "http://127.0.0.1:9000", 1000, KEY);
        assert!(verify_tc3(&auth, &tccli, 1000).is_ok());
    }

    #[test]
    fn tc3_refuses_a_scope_date_other_than_the_timestamp_s() {
        let auth = authenticator();
        let day = 86_400;
        // Signed correctly for the scope it names, but that scope is the day before.
        let mut headers = tc3_headers("127.0.0.1:9000", "127.0.0.1:9000", 5 * day, KEY);
        let stale = tc3_headers("127.0.0.1:9000", "127.0.0.1:9000", 4 * day, KEY);
        headers[0] = stale[0].clone();
        assert!(matches!(
            verify_tc3(&auth, &headers, 5 * day),
            Err(ApiError::SignatureFailure)
        ));
        // The last second of a day and its own date pass.
        let late = tc3_headers("127.0.0.1:9000", "127.0.0.1:9000", 5 * day - 1, KEY);
        assert!(verify_tc3(&auth, &late, 5 * day - 1).is_ok());
    }

    #[test]
    fn tc3_rejects_wrong_key_stale_time_and_bad_headers() {
        let auth = authenticator();
        let wrong = tc3_headers("h:1", "h:1", 1000, "other");
        assert!(matches!(
            verify_tc3(&auth, &wrong, 1000),
            Err(ApiError::SignatureFailure)
        ));
        let stale = tc3_headers("h:1", "h:1", 1000, KEY);
        let late = 1000 + Authenticator::API3_WINDOW_SECS + 1;
        assert!(matches!(
            verify_tc3(&auth, &stale, late),
            Err(ApiError::SignatureExpire { .. })
        ));
        let mut malformed = tc3_headers("h:1", "h:1", 1000, KEY);
        malformed[0].1 = "TC3-HMAC-SHA256 Credential=broken".to_owned();
        assert!(matches!(
            verify_tc3(&auth, &malformed, 1000),
            Err(ApiError::InvalidAuthorization(_))
        ));
    }

    #[test]
    fn nonce_cache_forgets_expired_entries() {
        let mut cache = NonceCache::default();
        for n in 0..2048 {
            assert!(cache.insert("a", 10, n, 0));
        }
        // Everything so far is older than the window now: the sweep empties the cache.
        assert!(cache.insert("a", 500, 0, 100));
        assert!(cache.seen.len() <= 1025, "{}", cache.seen.len());
        assert!(!cache.insert("a", 500, 0, 100));
    }
}
