//! JWT bearer tokens: HS256, RS256 and EdDSA from configured keys or a JWKS file.
//!
//! The traps this module closes, each covered by a test:
//! - `alg: none`/`None`: `decode_header` refuses any algorithm it does not know; we accept only
//!   the algorithms of configured keys.
//! - Algorithm confusion (RS256 public key used as an HS256 secret): a key is bound to one
//!   algorithm when configured; a token is tried only against keys of its own algorithm, and
//!   `Validation::algorithms` holds exactly that one.
//! - `kid` is compared as an opaque string against configured ids; it never becomes a path,
//!   query or URL. `jku`, `x5u` and `jwk` headers are never used to find a key.
//! - `jsonwebtoken` accepts a token without `aud`/`iss` unless they are required spec claims,
//!   defaults to 60 s leeway, and does not check `nbf` by default: all three are set here.
use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use portcullis_core::{Role, TenantId};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::str::FromStr;

pub const MAX_LEEWAY_SECS: u64 = 300;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    pub jwks_file: Option<PathBuf>,
}

fn default_leeway() -> u64 {
    30
}
fn default_tenant_claim() -> String {
    String::from("tenant_id")
}
fn default_role_claim() -> String {
    String::from("role")
}
fn default_subject_claim() -> String {
    String::from("sub")
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    pub kid: Option<String>,
    /// `HS256`, `RS256` or `EdDSA`.
    pub alg: String,
    /// HS256 shared secret (at least 32 bytes).
    pub secret: Option<String>,
    /// RS256/EdDSA public key in PEM.
    pub public_key_pem: Option<String>,
    pub public_key_file: Option<PathBuf>,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    decoding: DecodingKey,
}

pub(crate) struct JwtVerifier {
    cfg: JwtConfig,
    keys: Vec<Key>,
}

pub(crate) struct JwtClaims {
    pub subject: String,
    pub tenant: TenantId,
    pub role: Role,
}

fn parse_alg(s: &str) -> Result<Algorithm, String> {
    match s {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(format!("jwt key algorithm `{other}` is not supported: use HS256, RS256 or EdDSA")),
    }
}

impl JwtVerifier {
    pub(crate) fn new(cfg: JwtConfig) -> Result<Self, String> {
        if cfg.leeway_secs > MAX_LEEWAY_SECS {
            return Err(format!("auth.jwt.leeway_secs must be at most {MAX_LEEWAY_SECS}"));
        }
        if cfg.issuer.is_empty() || cfg.audience.is_empty() {
            return Err(String::from("auth.jwt.issuer and auth.jwt.audience must be set"));
        }
        let mut keys = Vec::new();
        for k in &cfg.keys {
            let alg = parse_alg(&k.alg)?;
            let pem = match (&k.public_key_pem, &k.public_key_file) {
                (Some(p), _) => Some(p.clone().into_bytes()),
                (None, Some(f)) => Some(std::fs::read(f).map_err(|e| format!("jwt key file {}: {e}", f.display()))?),
                (None, None) => None,
            };
            let decoding = match (alg, &k.secret, pem) {
                (Algorithm::HS256, Some(s), None) => {
                    if s.len() < 32 {
                        return Err(String::from("HS256 jwt secret must be at least 32 bytes"));
                    }
                    DecodingKey::from_secret(s.as_bytes())
                }
                (Algorithm::RS256, None, Some(p)) => {
                    DecodingKey::from_rsa_pem(&p).map_err(|e| format!("RS256 jwt public key: {e}"))?
                }
                (Algorithm::EdDSA, None, Some(p)) => {
                    DecodingKey::from_ed_pem(&p).map_err(|e| format!("EdDSA jwt public key: {e}"))?
                }
                _ => {
                    return Err(format!(
                        "jwt key `{}`: HS256 takes `secret`; RS256 and EdDSA take `public_key_pem` or `public_key_file`",
                        k.kid.as_deref().unwrap_or("(no kid)")
                    ));
                }
            };
            keys.push(Key { kid: k.kid.clone(), alg, decoding });
        }
        if let Some(path) = &cfg.jwks_file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("jwks file {}: {e}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text).map_err(|e| format!("jwks file {}: {e}", path.display()))?;
            for jwk in &set.keys {
                let alg = match jwk.common.key_algorithm {
                    Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                    Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
                    Some(KeyAlgorithm::HS256) => Algorithm::HS256,
                    _ => {
                        return Err(format!(
                            "jwks file {}: every key needs `alg` of RS256, EdDSA or HS256",
                            path.display()
                        ));
                    }
                };
                let decoding = DecodingKey::from_jwk(jwk).map_err(|e| format!("jwks key: {e}"))?;
                keys.push(Key { kid: jwk.common.key_id.clone(), alg, decoding });
            }
        }
        if keys.is_empty() {
            return Err(String::from("auth.jwt is configured but has no keys"));
        }
        Ok(Self { cfg, keys })
    }

    pub(crate) fn verify(&self, token: &str) -> Result<JwtClaims, &'static str> {
        if token.len() > 16 * 1024 || token.split('.').count() != 3 {
            return Err("malformed_jwt");
        }
        let header = decode_header(token).map_err(|_| "malformed_jwt")?;
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => true,
                (None, _) => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(if self.keys.iter().any(|k| k.alg == header.alg) {
                "jwt_unknown_key"
            } else {
                "jwt_algorithm_not_allowed"
            });
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.cfg.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud"]);
        validation.set_issuer(&[&self.cfg.issuer]);
        validation.set_audience(&[&self.cfg.audience]);
        let mut last = "jwt_bad_signature";
        for key in candidates {
            match decode::<serde_json::Value>(token, &key.decoding, &validation) {
                Ok(data) => return self.claims(&data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::ExpiredSignature => "expired_jwt",
                        K::ImmatureSignature => "jwt_not_yet_valid",
                        K::InvalidAudience => "jwt_wrong_audience",
                        K::InvalidIssuer => "jwt_wrong_issuer",
                        K::MissingRequiredClaim(_) => "jwt_missing_claim",
                        K::InvalidAlgorithm => "jwt_algorithm_not_allowed",
                        K::InvalidSignature => "jwt_bad_signature",
                        _ => "invalid_jwt",
                    };
                    if last != "jwt_bad_signature" {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn claims(&self, c: &serde_json::Value) -> Result<JwtClaims, &'static str> {
        let get = |name: &str| c.get(name).and_then(|v| v.as_str());
        let subject =
            get(&self.cfg.subject_claim).filter(|s| !s.is_empty() && s.len() <= 256).ok_or("jwt_missing_subject")?;
        let tenant = get(&self.cfg.tenant_claim).and_then(|t| TenantId::parse(t).ok()).ok_or("jwt_missing_tenant")?;
        let role = get(&self.cfg.role_claim).and_then(|r| Role::from_str(r).ok()).ok_or("jwt_missing_role")?;
        Ok(JwtClaims { subject: subject.to_owned(), tenant, role })
    }
}
