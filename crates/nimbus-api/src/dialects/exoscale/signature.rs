//! Exoscale's EXO2-HMAC-SHA256 request signature, verified the way `shared/dialects/exoscale.md` §2 says:
//!
//! ```text
//! Authorization: EXO2-HMAC-SHA256 credential=<key>[,signed-query-args=<a>;<b>],expires=<unix>,signature=<b64>
//! message = "<METHOD> <path>\n<raw body>\n<signed query values>\n<signed headers: empty>\n<expires>"
//! ```
//!
//! The body is the bytes received (never re-serialized), the path is the request line's, still
//! percent-encoded and without the query. Only the query parameters the client signed may be acted upon.

use std::collections::BTreeMap;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Signatures further in the future than this are refused: clients sign for 10 minutes, and a
/// far-future one would be a credential replayable for as long.
pub const MAX_EXPIRY_AHEAD_SECS: i64 = 3600;

/// Why a request's signature was refused. Every variant answers 403; the message differs only where it
/// reveals nothing about keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed(&'static str),
    Expired,
    TooFarAhead,
    /// Unknown key or wrong signature: indistinguishable on purpose.
    Invalid,
}

impl SignatureError {
    pub fn message(&self) -> String {
        match self {
            SignatureError::Missing => "Missing authentication: sign the request with EXO2-HMAC-SHA256".into(),
            SignatureError::Malformed(why) => format!("Invalid request signature: {why}"),
            SignatureError::Expired => "Request expired".into(),
            SignatureError::TooFarAhead => {
                format!("Invalid request signature: expires more than {MAX_EXPIRY_AHEAD_SECS} seconds ahead")
            }
            SignatureError::Invalid => "Invalid request signature".into(),
        }
    }
}

/// The pragmas of an `Authorization: EXO2-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub credential: String,
    pub signed_query_args: Vec<String>,
    pub expires: i64,
    pub signature: Vec<u8>,
}

pub fn parse_header(value: Option<&str>) -> Result<Header, SignatureError> {
    let value = value.ok_or(SignatureError::Missing)?.trim();
    let (scheme, pragmas) = value.split_once(' ').ok_or(SignatureError::Malformed("no pragmas"))?;
    if scheme != "EXO2-HMAC-SHA256" {
        return Err(SignatureError::Malformed("the scheme must be EXO2-HMAC-SHA256"));
    }
    let (mut credential, mut args, mut expires, mut signature) = (None, Vec::new(), None, None);
    for pragma in pragmas.trim().split(',') {
        // Split on the first '=': base64 signatures end in '='.
        let (name, val) = pragma.split_once('=').ok_or(SignatureError::Malformed("a pragma without '='"))?;
        match name.trim() {
            "credential" => credential = Some(val.to_string()),
            "signed-query-args" => args = val.split(';').filter(|s| !s.is_empty()).map(str::to_string).collect(),
            "expires" => expires = Some(val.parse::<i64>().map_err(|_| SignatureError::Malformed("bad expires"))?),
            "signature" => {
                signature = Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(val)
                        .map_err(|_| SignatureError::Malformed("the signature is not base64"))?,
                )
            }
            _ => {}
        }
    }
    Ok(Header {
        credential: credential.filter(|c| !c.is_empty()).ok_or(SignatureError::Malformed("no credential"))?,
        signed_query_args: args,
        expires: expires.ok_or(SignatureError::Malformed("no expires"))?,
        signature: signature.ok_or(SignatureError::Malformed("no signature"))?,
    })
}

/// The values of the signed query parameters, in the signed order. A parameter given once (blank or
/// not) contributes its value; given several times it contributes nothing. Blank occurrences are not
/// counted when another is not blank, because Python's `parse_qs` drops blanks before signing.
pub fn signed_query(query: Option<&str>, names: &[String]) -> (String, BTreeMap<String, String>) {
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or("").as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let mut concatenated = String::new();
    let mut usable = BTreeMap::new();
    for name in names {
        let values: Vec<&String> = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v).collect();
        let non_blank: Vec<&&String> = values.iter().filter(|v| !v.is_empty()).collect();
        let value = match non_blank.as_slice() {
            [] if !values.is_empty() => Some(String::new()),
            [one] => Some((**one).clone()),
            _ => None,
        };
        if let Some(v) = value {
            concatenated.push_str(&v);
            usable.insert(name.clone(), v);
        }
    }
    (concatenated, usable)
}

/// The message a client signs.
pub fn message(method: &str, path: &str, body: &[u8], query_values: &str, expires: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(path.len() + body.len() + 64);
    m.extend_from_slice(method.to_ascii_uppercase().as_bytes());
    m.push(b' ');
    m.extend_from_slice(path.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m.push(b'\n');
    m.extend_from_slice(query_values.as_bytes());
    m.push(b'\n');
    // Signed headers: none today.
    m.push(b'\n');
    m.extend_from_slice(expires.to_string().as_bytes());
    m
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 (RFC 2104), RustCrypto's `hmac` over `sha2`: what clients sign with.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    mac(key, message).finalize().into_bytes().into()
}

fn mac(key: &[u8], message: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed first), so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac
}

/// Checks the expiry and the signature of a parsed header against `secret`.
pub fn verify(header: &Header, secret: &str, message: &[u8], now: i64) -> Result<(), SignatureError> {
    if header.expires < now {
        return Err(SignatureError::Expired);
    }
    if header.expires > now + MAX_EXPIRY_AHEAD_SECS {
        return Err(SignatureError::TooFarAhead);
    }
    // `verify_slice` compares in constant time and refuses a signature of the wrong length.
    mac(secret.as_bytes(), message).verify_slice(&header.signature).map_err(|_| SignatureError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Case 1.
        let mac = hmac_sha256(&[0x0b; 20], b"Hi There");
        assert_eq!(hex::encode(mac), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        // Case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Case 6: a key longer than the block is hashed first.
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex::encode(mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn header_pragmas_split_on_the_first_equals_sign() {
        let h = parse_header(Some(
            "EXO2-HMAC-SHA256 credential=EXOabc,signed-query-args=a;b,expires=1700000000,signature=AAAA/w==",
        ))
        .unwrap();
        assert_eq!(h.credential, "EXOabc");
        assert_eq!(h.signed_query_args, vec!["a", "b"]);
        assert_eq!(h.expires, 1_700_000_000);
        assert_eq!(h.signature, vec![0, 0, 0, 255]);
        assert_eq!(parse_header(None), Err(SignatureError::Missing));
        assert!(matches!(parse_header(Some("Bearer x")), Err(SignatureError::Malformed(_))));
    }

    #[test]
    fn query_values_follow_the_clients_rules() {
        let names: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let (values, usable) = signed_query(Some("b=2&a=x%20y&c=1&c=2&d=&e=ignored"), &names);
        assert_eq!(values, "x y2");
        assert_eq!(usable.get("d").map(String::as_str), Some(""));
        assert!(!usable.contains_key("c") && !usable.contains_key("e"));
        // Python drops the blank one before signing a repeated parameter.
        assert_eq!(signed_query(Some("a=&a=v"), &names[..1]).0, "v");
    }

    #[test]
    fn expiry_is_checked_both_ways() {
        let msg = message("get", "/v2/instance", b"", "", 100);
        let sig = hmac_sha256(b"s", &msg).to_vec();
        let h = Header { credential: "k".into(), signed_query_args: vec![], expires: 100, signature: sig };
        assert_eq!(verify(&h, "s", &msg, 50), Ok(()));
        assert_eq!(verify(&h, "s", &msg, 101), Err(SignatureError::Expired));
        assert_eq!(verify(&h, "s", &msg, 100 - MAX_EXPIRY_AHEAD_SECS - 1), Err(SignatureError::TooFarAhead));
        assert_eq!(verify(&h, "t", &msg, 50), Err(SignatureError::Invalid));
        let truncated = Header { signature: h.signature[..16].to_vec(), ..h.clone() };
        assert_eq!(verify(&truncated, "s", &msg, 50), Err(SignatureError::Invalid));
    }
}
