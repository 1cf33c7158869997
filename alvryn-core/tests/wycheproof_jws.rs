//! Wycheproof's JSON Web Signature vectors that apply to HS256, run
//! against the token verifier's signature stage (`JwtKeys::verify_signature`,
//! the first thing `JwtKeys::verify` does). Every `invalid` case must be
//! rejected; every `valid` case must be accepted with its exact payload,
//! except the few where our parser is deliberately stricter than the JWS
//! specification (listed below, and still rejected: strictness only ever
//! refuses).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use alvryn_core::secret::SecretBytes;
use alvryn_core::token::{HmacSecrets, JwtKeys, JwtSettings, TokenKind};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../testdata/wycheproof/json_web_signature_test.json"
);

/// `invalid` vectors whose `jws` string is byte-for-byte the same as a
/// `valid` vector of the same group (tc 357): their padding characters
/// were lost from this copy of the file, so no verifier can satisfy both.
/// Checked to be identical below, so the list cannot hide a real failure.
const CONTRADICTORY: &[u64] = &[367, 370];

/// `valid` vectors we refuse on purpose, with the reason.
const STRICTER: &[(u64, &str)] = &[
    (
        372,
        "a non-base64url character inside the header part: we accept only canonical base64url",
    ),
    (
        373,
        "a non-base64url character inside the payload part: we accept only canonical base64url",
    ),
];

#[test]
fn wycheproof_hs256_vectors() {
    let data: Value =
        serde_json::from_slice(&std::fs::read(PATH).unwrap_or_else(|e| panic!("{PATH}: {e}")))
            .unwrap();
    let (mut valid, mut invalid, mut stricter, mut contradictory) = (0, 0, 0, 0);
    for group in data["testGroups"].as_array().unwrap() {
        let key = &group["private"];
        if key["kty"] != "oct" || key["alg"] != "HS256" {
            continue;
        }
        let secret = URL_SAFE_NO_PAD.decode(key["k"].as_str().unwrap()).unwrap();
        let secret = SecretBytes::new(secret);
        let keys = JwtKeys::new(
            JwtSettings::new("iss", "aud"),
            HmacSecrets::new(&secret, None).unwrap(),
            HmacSecrets::new(&secret, None).unwrap(),
        );
        let tests = group["tests"].as_array().unwrap();
        let valid_jws: Vec<&str> = tests
            .iter()
            .filter(|t| t["result"] == "valid")
            .filter_map(|t| t["jws"].as_str())
            .collect();
        for t in tests {
            let id = t["tcId"].as_u64().unwrap();
            if CONTRADICTORY.contains(&id) {
                assert!(
                    valid_jws.contains(&t["jws"].as_str().unwrap()),
                    "tc {id} is no longer identical to a valid vector"
                );
                contradictory += 1;
                continue;
            }
            let comment = t["comment"].as_str().unwrap_or("");
            let Some(jws) = t["jws"].as_str() else {
                // JSON serialization (an object, not a string): not a JWT at all.
                assert_eq!(t["result"], "invalid", "tc {id}");
                invalid += 1;
                continue;
            };
            let got = keys.verify_signature(TokenKind::Access, jws);
            // The full verifier (claims included) must refuse whatever stage 1 refuses.
            match t["result"].as_str().unwrap() {
                "invalid" => {
                    assert!(got.is_err(), "tc {id} ({comment}) accepted");
                    assert!(keys.verify(TokenKind::Access, jws, 0).is_err());
                    invalid += 1;
                }
                "valid" if STRICTER.iter().any(|(s, _)| *s == id) => {
                    assert!(
                        got.is_err(),
                        "tc {id} is listed as refused-by-strictness but was accepted"
                    );
                    stricter += 1;
                }
                "valid" => {
                    let payload =
                        got.unwrap_or_else(|e| panic!("tc {id} ({comment}) rejected: {e}"));
                    let expected = URL_SAFE_NO_PAD
                        .decode(jws.split('.').nth(1).unwrap())
                        .unwrap();
                    assert_eq!(payload, expected, "tc {id}");
                    valid += 1;
                }
                other => panic!("tc {id}: unexpected result {other}"),
            }
        }
    }
    println!(
        "HS256 vectors: {valid} valid accepted, {invalid} invalid rejected, {stricter} valid refused by strictness, \
         {contradictory} contradictory skipped"
    );
    assert_eq!(contradictory, CONTRADICTORY.len());
    // The HS256 groups of this file hold 40 cases: every one is accounted for.
    assert_eq!(
        (valid, invalid, stricter),
        (8, 28, STRICTER.len()),
        "vector counts changed"
    );
}
