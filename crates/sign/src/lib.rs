//! Request signatures of the SCF API: signature v1 (`HmacSHA1` / `HmacSHA256` over sorted
//! parameters) and TC3-HMAC-SHA256 (the `Authorization` header of API 3.0).
//!
//! The server uses this crate to verify a request and the CLI to sign one, so both sides share
//! one definition of every string that is signed. Everything here is a pure function: no I/O,
//! no clock, no key lookup.
//!
//! ```text
//! v1:  params ─► v1_string_to_sign ─► v1_signature / v1_verify (base64 HMAC)
//! TC3: request ─► tc3_canonical_request ─► tc3_string_to_sign ─► tc3_signature / tc3_verify
//!      header  ─► parse_tc3_authorization (SecretId, date, service, SignedHeaders, Signature)
//! ```
//!
//! It does not: decode query strings or form bodies (callers pass decoded v1 pairs and the raw
//! TC3 query), choose which headers are signed, look up secret keys, or check the timestamp
//! window and nonce replay. Those belong to the API layer.
//!
//! Invariants: every comparison against a client-supplied signature is constant-time (it goes
//! through `hmac`'s `verify_slice`), and a signature that cannot be decoded simply fails to
//! verify rather than producing an error.
//!
//! # Limitations
//!
//! * qcloudcli encodes the key and string to sign as latin-1; this crate always uses UTF-8, so a
//!   non-ASCII value signed by qcloudcli does not verify (qcloudcli itself refuses most of them).
//! * TC3 canonical headers lower-case values as the official document does; SDKs sign values as
//!   sent. A verifier that must accept both calls [`tc3_canonical_request_with`] twice.

#![warn(missing_docs)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The algorithm name that opens a TC3 `Authorization` header and its string to sign.
const TC3_ALGORITHM: &str = "TC3-HMAC-SHA256";

/// The fixed last element of a TC3 credential scope.
const TC3_TERMINATOR: &str = "tc3_request";

/// What a TC3 payload hashes as when the client sent `X-TC-Content-SHA256: UNSIGNED-PAYLOAD`.
const UNSIGNED_PAYLOAD: &[u8] = b"UNSIGNED-PAYLOAD";

/// Why signing input could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The TC3 `Authorization` header does not have the documented shape.
    #[error("malformed tc3 authorization header: {reason}")]
    MalformedAuthorization {
        /// What is wrong with the header, in lowercase words.
        reason: &'static str,
    },
}

// ---------------------------------------------------------------------------------------------
// Signature v1
// ---------------------------------------------------------------------------------------------

/// Which HMAC signature v1 uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V1Method {
    /// `HmacSHA1`, the default when `SignatureMethod` is absent or unrecognised.
    HmacSha1,
    /// `HmacSHA256`, selected only by the exact parameter value `HmacSHA256`.
    HmacSha256,
}

impl V1Method {
    /// Reads the `SignatureMethod` parameter: `HmacSHA256` exactly selects SHA-256; anything
    /// else, or no parameter at all, is SHA-1 (spec 1.2).
    pub fn from_param(value: Option<&str>) -> V1Method {
        match value {
            Some("HmacSHA256") => V1Method::HmacSha256,
            _ => V1Method::HmacSha1,
        }
    }

    /// The `SignatureMethod` value that names this method: `HmacSHA1` or `HmacSHA256`.
    pub fn as_param(self) -> &'static str {
        match self {
            V1Method::HmacSha1 => "HmacSHA1",
            V1Method::HmacSha256 => "HmacSHA256",
        }
    }
}

/// How parameter names are normalised before sorting; real clients disagree (spec 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameRenaming {
    /// Replace `_` with `.`, then sort (the documented rule, both Python SDKs).
    ReplaceThenSort,
    /// Sort the original names, then replace `_` with `.` (qcloudcli).
    SortThenReplace,
    /// Leave names alone (the Node SDK).
    None,
}

/// Builds the v1 string to sign: `METHOD + host + path + "?" + k=v&k=v...`.
///
/// `params` are decoded `(name, value)` pairs. A `Signature` pair is left out here even if the
/// caller already dropped it. Names have `_` replaced by `.` and are then sorted by bytes, so
/// uppercase names come before lowercase ones (spec 1.3 steps 2-3); pairs with equal names keep
/// their input order. When `skip_at_values` is true (the legacy path, POST), values starting
/// with `@` are left out. The method is upper-cased; host and path are used as given.
pub fn v1_string_to_sign(
    method: &str,
    host: &str,
    path: &str,
    params: &[(String, String)],
    skip_at_values: bool,
) -> String {
    v1_string_to_sign_renamed(
        method,
        host,
        path,
        params,
        skip_at_values,
        NameRenaming::ReplaceThenSort,
    )
}

/// [`v1_string_to_sign`] with an explicit name-renaming variant.
fn v1_string_to_sign_renamed(
    method: &str,
    host: &str,
    path: &str,
    params: &[(String, String)],
    skip_at_values: bool,
    renaming: NameRenaming,
) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .iter()
        .filter(|(name, _)| name != "Signature")
        .filter(|(_, value)| !(skip_at_values && value.starts_with('@')))
        .map(|(name, value)| {
            let name = match renaming {
                NameRenaming::ReplaceThenSort => name.replace('_', "."),
                NameRenaming::SortThenReplace | NameRenaming::None => name.clone(),
            };
            (name, value.as_str())
        })
        .collect();
    // Stable sort on the name bytes only: `str`'s `Ord` is byte order.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    if renaming == NameRenaming::SortThenReplace {
        for (name, _) in &mut pairs {
            *name = name.replace('_', ".");
        }
    }

    let mut out = format!("{}{host}{path}?", method.to_ascii_uppercase());
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// Computes a v1 signature: standard base64 (with padding) of `HMAC(secret_key, string_to_sign)`.
pub fn v1_signature(method: V1Method, secret_key: &str, string_to_sign: &str) -> String {
    let key = secret_key.as_bytes();
    let msg = string_to_sign.as_bytes();
    let digest = match method {
        V1Method::HmacSha1 => hmac_bytes::<Hmac<Sha1>>(key, msg),
        V1Method::HmacSha256 => hmac_bytes::<Hmac<Sha256>>(key, msg),
    };
    BASE64.encode(digest)
}

/// Verifies a v1 signature in constant time.
///
/// `signature` is the decoded base64 value the client sent; one that is not valid base64 simply
/// fails. The documented string to sign is tried first. Only when some parameter name contains
/// `_` are two client quirks also tried: names sorted before the `_` → `.` replacement
/// (qcloudcli) and names not replaced at all (Node SDK). See [`v1_string_to_sign`] for the other
/// arguments.
#[expect(
    clippy::too_many_arguments,
    reason = "mirrors the signed request's parts one to one; the signature is fixed by callers"
)]
pub fn v1_verify(
    method: V1Method,
    secret_key: &str,
    http_method: &str,
    host: &str,
    path: &str,
    params: &[(String, String)],
    skip_at_values: bool,
    signature: &str,
) -> bool {
    let Ok(expected) = BASE64.decode(signature) else {
        return false;
    };
    let has_underscore = params.iter().any(|(name, _)| name.contains('_'));
    let variants: &[NameRenaming] = if has_underscore {
        &[
            NameRenaming::ReplaceThenSort,
            NameRenaming::SortThenReplace,
            NameRenaming::None,
        ]
    } else {
        &[NameRenaming::ReplaceThenSort]
    };

    variants.iter().any(|&renaming| {
        let string_to_sign =
            v1_string_to_sign_renamed(http_method, host, path, params, skip_at_values, renaming);
        let msg = string_to_sign.as_bytes();
        match method {
            V1Method::HmacSha1 => hmac_verify::<Hmac<Sha1>>(secret_key.as_bytes(), msg, &expected),
            V1Method::HmacSha256 => {
                hmac_verify::<Hmac<Sha256>>(secret_key.as_bytes(), msg, &expected)
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// TC3-HMAC-SHA256
// ---------------------------------------------------------------------------------------------

/// A parsed TC3 `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tc3Authorization {
    /// The caller's SecretId, first element of the credential.
    pub secret_id: String,
    /// The `YYYY-MM-DD` date of the credential scope, as the client sent it.
    pub date: String,
    /// The service of the credential scope (`scf`; the Node SDK sends `127` for IP hosts).
    pub service: String,
    /// The signed header names, in the order the client listed them.
    pub signed_headers: Vec<String>,
    /// The signature as sent: normally 64 lowercase hex digits, `SKIP` for unsigned clients.
    pub signature: String,
}

/// Parses `TC3-HMAC-SHA256 Credential=<id>/<date>/<service>/tc3_request,
/// SignedHeaders=a;b, Signature=<hex>`.
///
/// The three fields may come in any order and may have spaces around the commas. The signature
/// is not checked to be hex here: [`tc3_verify`] rejects one that is not.
///
/// # Errors
///
/// [`SignError::MalformedAuthorization`] when the algorithm is not `TC3-HMAC-SHA256`, a field is
/// missing, repeated or empty, or the credential scope is not `<id>/<date>/<service>/tc3_request`.
pub fn parse_tc3_authorization(header: &str) -> Result<Tc3Authorization, SignError> {
    let malformed = |reason| SignError::MalformedAuthorization { reason };

    let (algorithm, rest) = header
        .trim()
        .split_once(char::is_whitespace)
        .ok_or(malformed("missing fields after the algorithm"))?;
    if algorithm != TC3_ALGORITHM {
        return Err(malformed("unsupported algorithm"));
    }

    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for field in rest.split(',').map(str::trim) {
        let (key, value) = field
            .split_once('=')
            .ok_or(malformed("field without '='"))?;
        let slot = match key.trim() {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => return Err(malformed("unknown field")),
        };
        if slot.replace(value.trim()).is_some() {
            return Err(malformed("repeated field"));
        }
    }
    let credential = credential.ok_or(malformed("missing Credential"))?;
    let signed_headers = signed_headers.ok_or(malformed("missing SignedHeaders"))?;
    let signature = signature.ok_or(malformed("missing Signature"))?;

    let scope: Vec<&str> = credential.split('/').collect();
    let [secret_id, date, service, terminator] = scope[..] else {
        return Err(malformed("credential scope does not have four parts"));
    };
    if terminator != TC3_TERMINATOR {
        return Err(malformed("credential scope does not end in tc3_request"));
    }
    if secret_id.is_empty() || date.is_empty() || service.is_empty() {
        return Err(malformed("empty part in credential scope"));
    }
    let signed_headers: Vec<String> = signed_headers.split(';').map(str::to_owned).collect();
    if signed_headers.iter().any(String::is_empty) {
        return Err(malformed("empty name in SignedHeaders"));
    }
    if signature.is_empty() {
        return Err(malformed("empty Signature"));
    }

    Ok(Tc3Authorization {
        secret_id: secret_id.to_owned(),
        date: date.to_owned(),
        service: service.to_owned(),
        signed_headers,
        signature: signature.to_owned(),
    })
}

/// The pieces of a request that TC3 signs.
#[derive(Debug, Clone, Copy)]
pub struct Tc3Request<'a> {
    /// The HTTP method, used as given (`POST`, `GET`).
    pub method: &'a str,
    /// The request path, used as given (`/` for API 3.0).
    pub path: &'a str,
    /// The query string exactly as sent, still percent-encoded and unsorted; empty for POST.
    pub raw_query: &'a str,
    /// `(lowercase name, value)` of each signed header, in `SignedHeaders` order.
    pub headers: &'a [(String, String)],
    /// What the last line of the canonical request hashes.
    pub payload: Tc3Payload<'a>,
}

/// The payload TC3 hashes into the canonical request.
#[derive(Debug, Clone, Copy)]
pub enum Tc3Payload<'a> {
    /// The raw body bytes (empty for GET).
    Bytes(&'a [u8]),
    /// The client sent `X-TC-Content-SHA256: UNSIGNED-PAYLOAD`: the literal string is hashed
    /// in place of the body.
    Unsigned,
}

/// How signed header values are written into the TC3 canonical headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tc3HeaderValues {
    /// Trimmed and lower-cased, as the official document specifies
    /// (`x-tc-action:describeinstances`).
    Lowercased,
    /// Trimmed only, as the Python and Node SDKs sign them (spec 2.3).
    AsSent,
}

/// Builds the TC3 canonical request with header values lower-cased (the official rule).
///
/// For the SDKs' usual `content-type;host` with lowercase values both forms are identical; a
/// verifier that must accept values with uppercase letters also tries
/// [`tc3_canonical_request_with`] and [`Tc3HeaderValues::AsSent`].
pub fn tc3_canonical_request(req: &Tc3Request<'_>) -> String {
    tc3_canonical_request_with(req, Tc3HeaderValues::Lowercased)
}

/// Builds the TC3 canonical request:
/// `method \n path \n raw_query \n canonical_headers \n signed_headers \n hex(sha256(payload))`.
///
/// Each canonical header is `lowercase(name):trim(value)\n`, the value lower-cased as well when
/// `values` says so; the block's own trailing newline leaves an empty line before the signed
/// header list.
pub fn tc3_canonical_request_with(req: &Tc3Request<'_>, values: Tc3HeaderValues) -> String {
    let mut canonical_headers = String::new();
    for (name, value) in req.headers {
        canonical_headers.push_str(&name.to_ascii_lowercase());
        canonical_headers.push(':');
        match values {
            Tc3HeaderValues::Lowercased => canonical_headers.push_str(&value.trim().to_lowercase()),
            Tc3HeaderValues::AsSent => canonical_headers.push_str(value.trim()),
        }
        canonical_headers.push('\n');
    }
    let payload = match req.payload {
        Tc3Payload::Bytes(bytes) => bytes,
        Tc3Payload::Unsigned => UNSIGNED_PAYLOAD,
    };

    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.path,
        req.raw_query,
        canonical_headers,
        signed_header_list(req.headers),
        sha256_hex(payload),
    )
}

/// Builds the TC3 string to sign:
/// `TC3-HMAC-SHA256 \n timestamp \n date/service/tc3_request \n hex(sha256(canonical_request))`.
pub fn tc3_string_to_sign(
    timestamp: i64,
    date: &str,
    service: &str,
    canonical_request: &str,
) -> String {
    format!(
        "{TC3_ALGORITHM}\n{timestamp}\n{date}/{service}/{TC3_TERMINATOR}\n{}",
        sha256_hex(canonical_request.as_bytes()),
    )
}

/// Computes the TC3 signature: lowercase hex of `HMAC-SHA256(signing key, string_to_sign)`,
/// where the signing key is derived from `secret_key`, `date` and `service` (spec 2.3 step 4).
pub fn tc3_signature(secret_key: &str, date: &str, service: &str, string_to_sign: &str) -> String {
    let key = tc3_signing_key(secret_key, date, service);
    hex::encode(hmac_bytes::<Hmac<Sha256>>(&key, string_to_sign.as_bytes()))
}

/// Verifies a TC3 signature in constant time.
///
/// `signature_hex` is hex-decoded (either case) and the raw bytes are checked with `hmac`'s
/// `verify_slice`, which compares in constant time. Non-hex input, or a signature of the wrong
/// length (such as `SKIP`), fails.
pub fn tc3_verify(
    secret_key: &str,
    date: &str,
    service: &str,
    string_to_sign: &str,
    signature_hex: &str,
) -> bool {
    let Ok(expected) = hex::decode(signature_hex) else {
        return false;
    };
    let key = tc3_signing_key(secret_key, date, service);
    hmac_verify::<Hmac<Sha256>>(&key, string_to_sign.as_bytes(), &expected)
}

/// Formats the UTC calendar date (`YYYY-MM-DD`) of a unix timestamp in seconds.
///
/// Negative timestamps count back from 1970. Years outside 0..=9999 are printed as plain
/// integers, which no real client sends.
pub fn utc_date(timestamp: i64) -> String {
    let (year, month, day) = civil_from_days(timestamp.div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02}")
}

/// Builds the full TC3 `Authorization` header value for a client.
///
/// The date comes from [`utc_date`] of `timestamp`, the signed header list from `req.headers`,
/// and the canonical request from [`tc3_canonical_request`].
pub fn tc3_authorization(
    secret_id: &str,
    secret_key: &str,
    timestamp: i64,
    service: &str,
    req: &Tc3Request<'_>,
) -> String {
    let date = utc_date(timestamp);
    let canonical_request = tc3_canonical_request(req);
    let string_to_sign = tc3_string_to_sign(timestamp, &date, service, &canonical_request);
    let signature = tc3_signature(secret_key, &date, service, &string_to_sign);
    format!(
        "{TC3_ALGORITHM} Credential={secret_id}/{date}/{service}/{TC3_TERMINATOR}, \
         SignedHeaders={}, Signature={signature}",
        signed_header_list(req.headers),
    )
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The `SignedHeaders` value: lowercase header names joined with `;`.
fn signed_header_list(headers: &[(String, String)]) -> String {
    let names: Vec<String> = headers
        .iter()
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect();
    names.join(";")
}

/// `kSigning = HMAC(HMAC(HMAC("TC3" + key, date), service), "tc3_request")`.
fn tc3_signing_key(secret_key: &str, date: &str, service: &str) -> Vec<u8> {
    let k_date = hmac_bytes::<Hmac<Sha256>>(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac_bytes::<Hmac<Sha256>>(&k_date, service.as_bytes());
    hmac_bytes::<Hmac<Sha256>>(&k_service, TC3_TERMINATOR.as_bytes())
}

/// One HMAC over `msg`, returned as raw bytes.
fn hmac_bytes<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = <M as Mac>::new_from_slice(key).expect("hmac accepts keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// Constant-time check that `expected` is the HMAC of `msg` under `key`.
fn hmac_verify<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8], expected: &[u8]) -> bool {
    let Ok(mut mac) = <M as Mac>::new_from_slice(key) else {
        return false;
    };
    mac.update(msg);
    mac.verify_slice(expected).is_ok()
}

/// Lowercase hex of the SHA-256 of `data`.
fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Converts days since 1970-01-01 to a proleptic Gregorian `(year, month, day)`.
///
/// Works in 400-year eras counted from 0000-03-01, so the leap day falls at the end of each
/// shifted year and every era has the same 146 097 days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch from 1970-01-01 to 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);

    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);

    // Months counted from March: 0 = March ... 11 = February.
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);

    // Both fit: day is 1..=31 and month 1..=12 by construction.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3Cozk1qA";
    const V1_SHA256: &str = "PSWUwVv4TfW2sQP1FT9KbbLjIZ9bmK8f1cL6fbpf3KI=";
    const V1_SHA1: &str = "NSI3UqqD99b/UJb4tbG/xZpRW64=";

    const TC3_KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";
    const TC3_TIMESTAMP: i64 = 1_551_113_065;
    const TC3_PAYLOAD: &[u8] = concat!(
        r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "#,
        r#""Name": "instance-name"}]}"#
    )
    .as_bytes();

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The official v1 example, deliberately out of order, with or without `SignatureMethod`.
    fn v1_params(with_method: bool) -> Vec<(String, String)> {
        let mut list = vec![
            ("limit", "20"),
            ("Timestamp", "1465185768"),
            ("offset", "0"),
            ("Nonce", "11886"),
            ("instanceIds.0", "ins-09dx96dg"),
            ("Region", "gz"),
            ("SecretId", "AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA"),
            ("Action", "DescribeInstances"),
        ];
        if with_method {
            list.push(("SignatureMethod", "HmacSHA256"));
        }
        pairs(&list)
    }

    fn verify_v1(method: V1Method, key: &str, params: &[(String, String)], sig: &str) -> bool {
        v1_verify(
            method,
            key,
            "GET",
            "cvm.api.qcloud.com",
            "/v2/index.php",
            params,
            false,
            sig,
        )
    }

    fn tc3_headers(with_action: bool) -> Vec<(String, String)> {
        let mut list = vec![
            ("content-type", "application/json; charset=utf-8"),
            ("host", "cvm.tencentcloudapi.com"),
        ];
        if with_action {
            list.push(("x-tc-action", "DescribeInstances"));
        }
        pairs(&list)
    }

    fn tc3_request(headers: &[(String, String)]) -> Tc3Request<'_> {
        Tc3Request {
            method: "POST",
            path: "/",
            raw_query: "",
            headers,
            payload: Tc3Payload::Bytes(TC3_PAYLOAD),
        }
    }

    fn tc3_vector_string_to_sign(with_action: bool) -> String {
        let headers = tc3_headers(with_action);
        let canonical = tc3_canonical_request(&tc3_request(&headers));
        tc3_string_to_sign(TC3_TIMESTAMP, "2019-02-25", "cvm", &canonical)
    }

    // -- v1 ---------------------------------------------------------------------------------

    #[test]
    fn signature_method_param_selects_sha256_only_when_exact() {
        assert_eq!(
            V1Method::from_param(Some("HmacSHA256")),
            V1Method::HmacSha256
        );
        assert_eq!(V1Method::from_param(Some("hmacsha256")), V1Method::HmacSha1);
        assert_eq!(V1Method::from_param(Some("HmacSHA1")), V1Method::HmacSha1);
        assert_eq!(V1Method::from_param(None), V1Method::HmacSha1);
        assert_eq!(V1Method::HmacSha1.as_param(), "HmacSHA1");
        assert_eq!(V1Method::HmacSha256.as_param(), "HmacSHA256");
    }

    #[test]
    fn v1_string_to_sign_matches_official_example() {
        let s = v1_string_to_sign(
            "GET",
            "cvm.api.qcloud.com",
            "/v2/index.php",
            &v1_params(true),
            false,
        );
        assert_eq!(
            s,
            "GETcvm.api.qcloud.com/v2/index.php?Action=DescribeInstances&Nonce=11886&Region=gz\
             &SecretId=AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA&SignatureMethod=HmacSHA256\
             &Timestamp=1465185768&instanceIds.0=ins-09dx96dg&limit=20&offset=0"
        );
    }

    #[test]
    fn v1_sha256_official_vector() {
        let s = v1_string_to_sign(
            "GET",
            "cvm.api.qcloud.com",
            "/v2/index.php",
            &v1_params(true),
            false,
        );
        assert_eq!(v1_signature(V1Method::HmacSha256, V1_KEY, &s), V1_SHA256);
        assert!(verify_v1(
            V1Method::HmacSha256,
            V1_KEY,
            &v1_params(true),
            V1_SHA256
        ));
    }

    #[test]
    fn v1_sha1_official_vector() {
        let s = v1_string_to_sign(
            "GET",
            "cvm.api.qcloud.com",
            "/v2/index.php",
            &v1_params(false),
            false,
        );
        assert_eq!(v1_signature(V1Method::HmacSha1, V1_KEY, &s), V1_SHA1);
        assert!(verify_v1(
            V1Method::HmacSha1,
            V1_KEY,
            &v1_params(false),
            V1_SHA1
        ));
    }

    #[test]
    fn signature_param_is_excluded_from_string_to_sign() {
        let mut params = v1_params(false);
        params.push(("Signature".into(), V1_SHA1.into()));
        let s = v1_string_to_sign("GET", "h", "/", &params, false);
        assert!(!s.contains("Signature="));
        assert!(verify_v1(V1Method::HmacSha1, V1_KEY, &params, V1_SHA1));
    }

    #[test]
    fn at_values_are_skipped_only_when_asked() {
        let params = pairs(&[("Action", "CreateFunction"), ("code", "@UEsDBA==")]);
        let skipped = v1_string_to_sign("POST", "h", "/v2/index.php", &params, true);
        assert_eq!(skipped, "POSTh/v2/index.php?Action=CreateFunction");
        let kept = v1_string_to_sign("POST", "h", "/v2/index.php", &params, false);
        assert_eq!(
            kept,
            "POSTh/v2/index.php?Action=CreateFunction&code=@UEsDBA=="
        );
    }

    #[test]
    fn underscores_in_names_become_dots() {
        let params = pairs(&[("Filters_0_Name", "x")]);
        let s = v1_string_to_sign("GET", "h", "/", &params, false);
        assert_eq!(s, "GETh/?Filters.0.Name=x");
    }

    #[test]
    fn uppercase_names_sort_before_lowercase() {
        let params = pairs(&[("b", "1"), ("a", "2"), ("Z", "3"), ("A", "4")]);
        let s = v1_string_to_sign("get", "h", "/", &params, false);
        assert_eq!(s, "GETh/?A=4&Z=3&a=2&b=1");
    }

    #[test]
    fn v1_verify_rejects_wrong_key() {
        let key = "Gu5t9xGARNpq86cd98joQYCN3Cozk1qB";
        assert!(!verify_v1(
            V1Method::HmacSha256,
            key,
            &v1_params(true),
            V1_SHA256
        ));
    }

    #[test]
    fn v1_verify_rejects_tampered_param() {
        let mut params = v1_params(true);
        params[0].1 = "21".into();
        assert!(!verify_v1(V1Method::HmacSha256, V1_KEY, &params, V1_SHA256));
    }

    #[test]
    fn v1_verify_rejects_wrong_method() {
        assert!(!verify_v1(
            V1Method::HmacSha1,
            V1_KEY,
            &v1_params(true),
            V1_SHA256
        ));
    }

    #[test]
    fn v1_verify_rejects_non_base64_signature() {
        assert!(!verify_v1(
            V1Method::HmacSha256,
            V1_KEY,
            &v1_params(true),
            "not base64!"
        ));
        assert!(!verify_v1(
            V1Method::HmacSha256,
            V1_KEY,
            &v1_params(true),
            ""
        ));
    }

    #[test]
    fn v1_verify_accepts_sort_then_replace_quirk() {
        // qcloudcli sorts before renaming: `a.c` < `a_b` because '.' < '_', so the order flips.
        let params = pairs(&[("a_b", "1"), ("a.c", "2")]);
        let quirk = "GETh/?a.c=2&a.b=1";
        let documented = v1_string_to_sign("GET", "h", "/", &params, false);
        assert_eq!(documented, "GETh/?a.b=1&a.c=2");
        let sig = v1_signature(V1Method::HmacSha1, V1_KEY, quirk);
        assert!(v1_verify(
            V1Method::HmacSha1,
            V1_KEY,
            "GET",
            "h",
            "/",
            &params,
            false,
            &sig
        ));
    }

    #[test]
    fn v1_verify_accepts_unreplaced_names_quirk() {
        let params = pairs(&[("a_b", "1")]);
        let sig = v1_signature(V1Method::HmacSha256, V1_KEY, "GETh/?a_b=1");
        assert!(v1_verify(
            V1Method::HmacSha256,
            V1_KEY,
            "GET",
            "h",
            "/",
            &params,
            false,
            &sig
        ));
    }

    #[test]
    fn v1_verify_tries_no_quirks_without_underscores() {
        // Without `_` in any name the quirk variants equal the documented one; a signature over
        // some other string must still fail.
        let params = pairs(&[("a", "1")]);
        let sig = v1_signature(V1Method::HmacSha1, V1_KEY, "GETh/?a=2");
        assert!(!v1_verify(
            V1Method::HmacSha1,
            V1_KEY,
            "GET",
            "h",
            "/",
            &params,
            false,
            &sig
        ));
    }

    // -- TC3 --------------------------------------------------------------------------------

    #[test]
    fn tc3_payload_hash_matches_official_doc() {
        assert_eq!(
            sha256_hex(TC3_PAYLOAD),
            "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
    }

    #[test]
    fn tc3_canonical_request_with_action_header_matches_official_hash() {
        let headers = tc3_headers(true);
        let canonical = tc3_canonical_request(&tc3_request(&headers));
        assert!(
            canonical
                .contains("\nx-tc-action:describeinstances\n\ncontent-type;host;x-tc-action\n")
        );
        assert_eq!(
            sha256_hex(canonical.as_bytes()),
            "7019a55be8395899b900fb5564e4200d984910f34794a27cb3fb7d10ff6a1e84"
        );
    }

    #[test]
    fn tc3_canonical_request_with_sdk_headers_matches_official_hash() {
        let headers = tc3_headers(false);
        let canonical = tc3_canonical_request(&tc3_request(&headers));
        assert!(canonical.starts_with("POST\n/\n\ncontent-type:"));
        assert_eq!(
            sha256_hex(canonical.as_bytes()),
            "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
    }

    #[test]
    fn tc3_header_values_as_sent_keep_case_and_trim() {
        let headers = pairs(&[("Host", "  Example.COM:9000 ")]);
        let req = Tc3Request {
            method: "GET",
            path: "/",
            raw_query: "a=1",
            headers: &headers,
            payload: Tc3Payload::Bytes(b""),
        };
        let sent = tc3_canonical_request_with(&req, Tc3HeaderValues::AsSent);
        assert!(sent.starts_with("GET\n/\na=1\nhost:Example.COM:9000\n\nhost\n"));
        let lowered = tc3_canonical_request(&req);
        assert!(lowered.starts_with("GET\n/\na=1\nhost:example.com:9000\n\nhost\n"));
    }

    #[test]
    fn tc3_unsigned_payload_hashes_the_literal() {
        let headers = tc3_headers(false);
        let mut req = tc3_request(&headers);
        req.payload = Tc3Payload::Unsigned;
        let canonical = tc3_canonical_request(&req);
        assert!(canonical.ends_with(&sha256_hex(b"UNSIGNED-PAYLOAD")));
    }

    #[test]
    fn tc3_string_to_sign_has_documented_shape() {
        let s = tc3_string_to_sign(TC3_TIMESTAMP, "2019-02-25", "cvm", "x");
        assert_eq!(
            s,
            format!(
                "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n{}",
                sha256_hex(b"x")
            )
        );
    }

    #[test]
    fn tc3_signing_key_matches_vectors() {
        let k_date = hmac_bytes::<Hmac<Sha256>>(format!("TC3{TC3_KEY}").as_bytes(), b"2019-02-25");
        assert_eq!(
            hex::encode(k_date),
            "d1308c81fe71cfd4e06437bbc067b2b8a3d2d8c0e375d547f15c41d5214b395a"
        );
        assert_eq!(
            hex::encode(tc3_signing_key(TC3_KEY, "2019-02-25", "cvm")),
            "ac658d5dde49e9bfdd14e04e062f66b05d9f637d44b8a8d845327d4a77f666b1"
        );
    }

    #[test]
    fn tc3_signature_with_action_header_matches_vector() {
        let sts = tc3_vector_string_to_sign(true);
        let sig = "644be983de9a8a3f00db8eadaba61467c3b429e2215758ba897b738ca469fd26";
        assert_eq!(tc3_signature(TC3_KEY, "2019-02-25", "cvm", &sts), sig);
        assert!(tc3_verify(TC3_KEY, "2019-02-25", "cvm", &sts, sig));
    }

    #[test]
    fn tc3_signature_with_sdk_headers_matches_vector() {
        let sts = tc3_vector_string_to_sign(false);
        let sig = "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168";
        assert_eq!(tc3_signature(TC3_KEY, "2019-02-25", "cvm", &sts), sig);
        assert!(tc3_verify(
            TC3_KEY,
            "2019-02-25",
            "cvm",
            &sts,
            &sig.to_uppercase()
        ));
    }

    #[test]
    fn tc3_verify_rejects_wrong_key_scope_and_garbage() {
        let sts = tc3_vector_string_to_sign(false);
        let sig = "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168";
        assert!(!tc3_verify("other", "2019-02-25", "cvm", &sts, sig));
        assert!(!tc3_verify(TC3_KEY, "2019-02-26", "cvm", &sts, sig));
        assert!(!tc3_verify(TC3_KEY, "2019-02-25", "scf", &sts, sig));
        assert!(!tc3_verify(TC3_KEY, "2019-02-25", "cvm", &sts, "SKIP"));
        assert!(!tc3_verify(TC3_KEY, "2019-02-25", "cvm", &sts, &sig[..62]));
    }

    #[test]
    fn tc3_authorization_round_trips_through_parse_and_verify() {
        let headers = pairs(&[
            ("content-type", "application/json"),
            ("host", "127.0.0.1:9000"),
        ]);
        let req = Tc3Request {
            payload: Tc3Payload::Bytes(b"{}"),
            ..tc3_request(&headers)
        };
        let header = tc3_authorization("AKIDtest", TC3_KEY, TC3_TIMESTAMP, "scf", &req);
        assert!(header.starts_with(
            "TC3-HMAC-SHA256 Credential=AKIDtest/2019-02-25/scf/tc3_request, \
             SignedHeaders=content-type;host, Signature="
        ));

        let auth = parse_tc3_authorization(&header).expect("own header parses");
        assert_eq!(auth.secret_id, "AKIDtest");
        assert_eq!(auth.signed_headers, ["content-type", "host"]);
        let canonical = tc3_canonical_request(&req);
        let sts = tc3_string_to_sign(TC3_TIMESTAMP, &auth.date, &auth.service, &canonical);
        assert!(tc3_verify(
            TC3_KEY,
            &auth.date,
            &auth.service,
            &sts,
            &auth.signature
        ));
    }

    #[test]
    fn parses_well_formed_authorization() {
        let auth = parse_tc3_authorization(
            "TC3-HMAC-SHA256 Credential=AKIDz8/2019-02-25/cvm/tc3_request,SignedHeaders=\
             content-type;host;x-tc-action,  Signature=abc123",
        )
        .expect("well-formed header parses");
        assert_eq!(
            auth,
            Tc3Authorization {
                secret_id: "AKIDz8".into(),
                date: "2019-02-25".into(),
                service: "cvm".into(),
                signed_headers: vec!["content-type".into(), "host".into(), "x-tc-action".into()],
                signature: "abc123".into(),
            }
        );
    }

    fn assert_malformed(header: &str) {
        assert!(
            matches!(
                parse_tc3_authorization(header),
                Err(SignError::MalformedAuthorization { .. })
            ),
            "{header:?} should be malformed"
        );
    }

    #[test]
    fn rejects_authorization_without_credential() {
        assert_malformed("TC3-HMAC-SHA256 SignedHeaders=host, Signature=ab");
    }

    #[test]
    fn rejects_authorization_with_bad_scope() {
        assert_malformed(
            "TC3-HMAC-SHA256 Credential=id/2019-02-25/cvm, SignedHeaders=host, Signature=ab",
        );
        assert_malformed(
            "TC3-HMAC-SHA256 Credential=id/2019-02-25/cvm/tc4, SignedHeaders=host, Signature=ab",
        );
        assert_malformed(
            "TC3-HMAC-SHA256 Credential=id//cvm/tc3_request, SignedHeaders=host, Signature=ab",
        );
    }

    #[test]
    fn rejects_authorization_without_signature() {
        assert_malformed(
            "TC3-HMAC-SHA256 Credential=id/2019-02-25/cvm/tc3_request, SignedHeaders=host",
        );
        assert_malformed(
            "TC3-HMAC-SHA256 Credential=i/d/cvm/tc3_request, SignedHeaders=host, Signature=",
        );
    }

    #[test]
    fn rejects_authorization_with_other_algorithm_or_repeats() {
        assert_malformed(
            "AWS4-HMAC-SHA256 Credential=id/d/s/tc3_request, SignedHeaders=h, Signature=a",
        );
        assert_malformed("TC3-HMAC-SHA256");
        assert_malformed(
            "TC3-HMAC-SHA256 Credential=i/d/s/tc3_request,Signature=a,SignedHeaders=h,Signature=b",
        );
        assert_malformed("TC3-HMAC-SHA256 Credential=id/d/s/tc3_request, Signature=a");
    }

    // -- utc_date ---------------------------------------------------------------------------

    #[test]
    fn utc_date_formats_known_timestamps() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(86_399), "1970-01-01");
        assert_eq!(utc_date(86_400), "1970-01-02");
        assert_eq!(utc_date(TC3_TIMESTAMP), "2019-02-25");
        assert_eq!(utc_date(1_465_185_768), "2016-06-06");
        assert_eq!(utc_date(946_684_799), "1999-12-31");
        assert_eq!(utc_date(946_684_800), "2000-01-01");
    }

    #[test]
    fn utc_date_handles_leap_years() {
        assert_eq!(utc_date(951_782_400), "2000-02-29"); // divisible by 400: leap
        assert_eq!(utc_date(951_868_800), "2000-03-01");
        assert_eq!(utc_date(1_709_164_800), "2024-02-29");
        assert_eq!(utc_date(4_107_456_000), "2100-02-28"); // divisible by 100: not leap
        assert_eq!(utc_date(4_107_542_400), "2100-03-01");
        assert_eq!(utc_date(1_735_603_200), "2024-12-31"); // day 366 of a leap year
    }

    #[test]
    fn utc_date_handles_pre_epoch_timestamps() {
        assert_eq!(utc_date(-1), "1969-12-31");
        assert_eq!(utc_date(-86_400), "1969-12-31");
        assert_eq!(utc_date(-86_401), "1969-12-30");
        assert_eq!(utc_date(68_169_600), "1972-02-29");
        assert_eq!(utc_date(-2_203_891_200), "1900-03-01");
        assert_eq!(utc_date(-2_203_977_600), "1900-02-28");
    }

    #[test]
    fn utc_date_agrees_with_day_by_day_count() {
        // Walk 1960..2040 one day at a time with an independent month-length table.
        let mut day = -3_653_i64; // 1960-01-01
        for year in 1960..2040_i64 {
            let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            let lengths = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            for (month, &len) in lengths.iter().enumerate() {
                for dom in 1..=len {
                    let want = format!("{year:04}-{:02}-{dom:02}", month + 1);
                    assert_eq!(utc_date(day * 86_400 + 43_200), want);
                    day += 1;
                }
            }
        }
    }
}
