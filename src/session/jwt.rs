//! Local session-token checks: claims (`exp`, `nbf`) on any JWT, and the signature when a key is
//! configured. Pure functions over the token and a clock reading.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Why a token is refused locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtReject {
    Expired,
    NotYetValid,
    /// Bad signature, wrong or `none` algorithm, unknown key.
    BadSignature,
    /// Not a JWT, while a key is configured.
    NotAJwt,
    /// JWT-shaped (three parts, header and claims JSON objects) but against RFC 7515/7519: no
    /// `alg`, an `exp` or `nbf` that is not a number, or one of them repeated.
    Malformed,
}

/// What the local checks learned of an accepted token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtInfo {
    /// Not a JWT, and no key is configured: other sources decide.
    Opaque,
    /// A JWT whose claims (and signature, with a key) passed. `exp` in Unix seconds.
    Valid { exp: Option<u64> },
}

/// The configured verification key.
pub enum JwtKey {
    None,
    Single { key: DecodingKey, alg: Algorithm },
    Set(JwkSet),
}

#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub(crate) struct KeyError {
    pub(crate) key: &'static str,
    pub(crate) message: String,
}

impl JwtKey {
    /// Loads whichever of the three key settings is set (config validation allows at most one).
    pub(crate) fn load(
        hs256_secret: Option<&Path>,
        public_key: Option<&Path>,
        jwks: Option<&Path>,
    ) -> Result<JwtKey, KeyError> {
        let read = |key: &'static str, path: &Path| {
            std::fs::read(path).map_err(|e| KeyError {
                key,
                message: format!("{}: {e}", path.display()),
            })
        };
        if let Some(path) = hs256_secret {
            let mut secret = read("session.jwt_hs256_secret_file", path)?;
            // Secret files usually end with a newline that is not part of the secret.
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            if secret.is_empty() {
                return Err(KeyError {
                    key: "session.jwt_hs256_secret_file",
                    message: "the secret is empty".into(),
                });
            }
            return Ok(JwtKey::Single {
                key: DecodingKey::from_secret(&secret),
                alg: Algorithm::HS256,
            });
        }
        if let Some(path) = public_key {
            let pem = read("session.jwt_public_key_file", path)?;
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                return Ok(JwtKey::Single {
                    key,
                    alg: Algorithm::RS256,
                });
            }
            return DecodingKey::from_ec_pem(&pem)
                .map(|key| JwtKey::Single {
                    key,
                    alg: Algorithm::ES256,
                })
                .map_err(|e| KeyError {
                    key: "session.jwt_public_key_file",
                    message: format!("not an RSA or EC public key in PEM: {e}"),
                });
        }
        if let Some(path) = jwks {
            let text = read("session.jwks_file", path)?;
            let set: JwkSet = serde_json::from_slice(&text).map_err(|e| KeyError {
                key: "session.jwks_file",
                message: e.to_string(),
            })?;
            if set.keys.is_empty() {
                return Err(KeyError {
                    key: "session.jwks_file",
                    message: "the key set is empty".into(),
                });
            }
            return Ok(JwtKey::Set(set));
        }
        Ok(JwtKey::None)
    }

    pub(crate) fn is_some(&self) -> bool {
        !matches!(self, JwtKey::None)
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<f64>,
    nbf: Option<f64>,
}

/// What a token looks like, without checking any signature.
enum Peeked {
    Jwt(Header, Claims),
    /// Three parts whose header and claims are JSON objects, but not a valid JWT's.
    Malformed,
    NotAJwt,
}

/// The header and claims of a compact JWS.
fn peek(token: &str) -> Peeked {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Peeked::NotAJwt;
    };
    let (Ok(h), Ok(p)) = (URL_SAFE_NO_PAD.decode(h), URL_SAFE_NO_PAD.decode(p)) else {
        return Peeked::NotAJwt;
    };
    match (
        serde_json::from_slice::<Header>(&h),
        serde_json::from_slice::<Claims>(&p),
    ) {
        (Ok(header), Ok(claims)) => Peeked::Jwt(header, claims),
        // Only on the rare failure: is it a JWT gone wrong, or something else altogether?
        _ if is_json_object(&h) && is_json_object(&p) => Peeked::Malformed,
        _ => Peeked::NotAJwt,
    }
}

fn is_json_object(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes).is_ok()
}

/// Checks a session token at `now` (Unix time) with `leeway` for clock skew.
pub(crate) fn check(
    token: &str,
    key: &JwtKey,
    now: Duration,
    leeway: Duration,
) -> Result<JwtInfo, JwtReject> {
    let (header, claims) = match peek(token) {
        Peeked::Jwt(header, claims) => (header, claims),
        Peeked::Malformed => return Err(JwtReject::Malformed),
        Peeked::NotAJwt if key.is_some() => return Err(JwtReject::NotAJwt),
        Peeked::NotAJwt => return Ok(JwtInfo::Opaque),
    };
    let now = now.as_secs_f64();
    let leeway = leeway.as_secs_f64();
    if let Some(exp) = claims.exp {
        if exp + leeway <= now {
            return Err(JwtReject::Expired);
        }
    }
    if let Some(nbf) = claims.nbf {
        if nbf - leeway > now {
            return Err(JwtReject::NotYetValid);
        }
    }
    let exp = claims.exp.map(|e| e.max(0.0) as u64);
    if header.alg.eq_ignore_ascii_case("none") && key.is_some() {
        return Err(JwtReject::BadSignature);
    }
    match key {
        JwtKey::None => Ok(JwtInfo::Valid { exp }),
        JwtKey::Single { key, alg } => verify(token, key, *alg).map(|()| JwtInfo::Valid { exp }),
        JwtKey::Set(set) => {
            let kid = jsonwebtoken::decode_header(token)
                .ok()
                .and_then(|h| h.kid)
                .ok_or(JwtReject::BadSignature)?;
            let jwk = set.find(&kid).ok_or(JwtReject::BadSignature)?;
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
                _ => return Err(JwtReject::BadSignature),
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|_| JwtReject::BadSignature)?;
            verify(token, &key, alg).map(|()| JwtInfo::Valid { exp })
        }
    }
}

/// The signature, with the one algorithm the key allows. Time claims were checked already.
fn verify(token: &str, key: &DecodingKey, alg: Algorithm) -> Result<(), JwtReject> {
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(token, key, &v)
        .map(|_| ())
        .map_err(|_| JwtReject::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header as JwtHeader};

    const NOW: u64 = 1_800_000_000;
    const LEEWAY: Duration = Duration::from_secs(30);

    fn hs(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &JwtHeader::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn at(now: u64) -> Duration {
        Duration::from_secs(now)
    }

    fn hs_key(secret: &[u8]) -> JwtKey {
        JwtKey::Single {
            key: DecodingKey::from_secret(secret),
            alg: Algorithm::HS256,
        }
    }

    #[test]
    fn time_claims_are_checked_with_leeway_and_no_key() {
        let none = JwtKey::None;
        let t = |claims| hs(claims, b"whatever");
        let exp = serde_json::json!({"exp": NOW - 31});
        assert_eq!(
            check(&t(exp), &none, at(NOW), LEEWAY),
            Err(JwtReject::Expired)
        );
        let within = serde_json::json!({"exp": NOW - 29});
        assert!(check(&t(within), &none, at(NOW), LEEWAY).is_ok());
        let nbf = serde_json::json!({"nbf": NOW + 31});
        assert_eq!(
            check(&t(nbf), &none, at(NOW), LEEWAY),
            Err(JwtReject::NotYetValid)
        );
        let fine = serde_json::json!({"exp": NOW + 60, "nbf": NOW - 1});
        assert_eq!(
            check(&t(fine), &none, at(NOW), LEEWAY),
            Ok(JwtInfo::Valid {
                exp: Some(NOW + 60),
            })
        );
    }

    #[test]
    fn the_contract_example_token_expired_in_2020() {
        let example = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VySWQiOiIxMjM0NTY3ODkwIiwic2Vzc2lvbklkIjoiYWJjZGVmMTIzNDU2IiwiaWF0IjoxNjA1MDk3ODk5LCJleHAiOjE2MDUxODQyOTl9.4XRQ1iXDyvEj5LgPZHbmTmzOZs98M3YPOzgf3MhxjaI";
        assert_eq!(
            check(example, &JwtKey::None, at(NOW), LEEWAY),
            Err(JwtReject::Expired)
        );
        assert!(check(example, &JwtKey::None, at(1_605_184_000), LEEWAY).is_ok());
    }

    #[test]
    fn opaque_tokens_pass_without_a_key_and_fail_with_one() {
        for opaque in ["opaque-session", "a.b.c", "a.b", "x.eyJ9.y", ""] {
            assert_eq!(
                check(opaque, &JwtKey::None, at(NOW), LEEWAY),
                Ok(JwtInfo::Opaque),
                "{opaque}"
            );
            assert_eq!(
                check(opaque, &hs_key(b"k"), at(NOW), LEEWAY),
                Err(JwtReject::NotAJwt),
                "{opaque}"
            );
        }
    }

    #[test]
    fn a_jwt_with_a_broken_header_or_time_claim_is_refused_with_or_without_a_key() {
        let b64 = |json: &str| URL_SAFE_NO_PAD.encode(json);
        let good_header = r#"{"alg":"HS256"}"#;
        let cases = [
            (r#"{"typ":"JWT"}"#, r#"{"exp":5}"#),
            ("{}", r#"{"exp":5}"#),
            (r#"{"alg":null}"#, r#"{"exp":5}"#),
            (r#"{"alg":1}"#, r#"{"exp":5}"#),
            (good_header, r#"{"exp":4105184299,"exp":5}"#),
            (good_header, r#"{"exp":"5"}"#),
            (good_header, r#"{"exp":true}"#),
            (good_header, r#"{"nbf":"later"}"#),
        ];
        for (header, claims) in cases {
            let token = format!("{}.{}.sig", b64(header), b64(claims));
            for key in [JwtKey::None, hs_key(b"k")] {
                assert_eq!(
                    check(&token, &key, at(NOW), LEEWAY),
                    Err(JwtReject::Malformed),
                    "{header} {claims}"
                );
            }
        }
        // `null` is an absent claim, as before.
        let token = format!("{}.{}.sig", b64(good_header), b64(r#"{"exp":null}"#));
        assert!(check(&token, &JwtKey::None, at(NOW), LEEWAY).is_ok());
        // Parts that are not JSON objects are no JWT at all.
        for (header, claims) in [("not json", r#"{"exp":5}"#), (good_header, "[5]")] {
            let token = format!("{}.{}.sig", b64(header), b64(claims));
            assert_eq!(
                check(&token, &JwtKey::None, at(NOW), LEEWAY),
                Ok(JwtInfo::Opaque)
            );
        }
    }

    #[test]
    fn signatures_are_checked_with_a_key() {
        let claims = serde_json::json!({"exp": NOW + 60});
        let good = hs(claims.clone(), b"secret");
        assert_eq!(
            check(&good, &hs_key(b"secret"), at(NOW), LEEWAY),
            Ok(JwtInfo::Valid {
                exp: Some(NOW + 60),
            })
        );
        let forged = hs(claims.clone(), b"other");
        assert_eq!(
            check(&forged, &hs_key(b"secret"), at(NOW), LEEWAY),
            Err(JwtReject::BadSignature)
        );
        // alg: none, and a wrong algorithm.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert_eq!(
            check(&none, &hs_key(b"secret"), at(NOW), LEEWAY),
            Err(JwtReject::BadSignature)
        );
        let hs384 = encode(
            &JwtHeader::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(
            check(&hs384, &hs_key(b"secret"), at(NOW), LEEWAY),
            Err(JwtReject::BadSignature)
        );
    }

    #[test]
    fn an_expired_forged_token_is_refused_before_its_signature() {
        let forged = hs(serde_json::json!({"exp": NOW - 100}), b"other");
        assert_eq!(
            check(&forged, &hs_key(b"secret"), at(NOW), LEEWAY),
            Err(JwtReject::Expired)
        );
    }
}
