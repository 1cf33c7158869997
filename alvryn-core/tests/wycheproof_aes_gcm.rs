//! Wycheproof AES-GCM vectors against every compiled-in AEAD backend.
//!
//! Only the groups the field cipher uses are run: 256-bit key, 96-bit
//! nonce, 128-bit tag. `valid` cases must seal to exactly the expected
//! ciphertext and tag and open back to the message; `invalid` cases must
//! fail to open; `acceptable` cases (none in the vendored file) are
//! recorded but never fail the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alvryn_core::crypto::{AeadBackend, AeadKey, KEY_LEN, NONCE_LEN, TAG_LEN};
use alvryn_core::secret::SecretBytes;
use serde::Deserialize;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../testdata/wycheproof/aes_gcm_test.json"
);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VectorFile {
    algorithm: String,
    number_of_tests: usize,
    test_groups: Vec<Group>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Group {
    key_size: u32,
    iv_size: u32,
    tag_size: u32,
    tests: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    tc_id: u32,
    comment: String,
    key: String,
    iv: String,
    aad: String,
    msg: String,
    ct: String,
    tag: String,
    result: Expect,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Valid,
    Invalid,
    Acceptable,
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn load() -> VectorFile {
    let text = std::fs::read_to_string(VECTORS)
        .unwrap_or_else(|e| panic!("cannot read Wycheproof vectors at {VECTORS}: {e}"));
    serde_json::from_str(&text).expect("aes_gcm_test.json parses")
}

fn is_field_cipher_group(g: &Group) -> bool {
    g.key_size == 256 && g.iv_size == 96 && g.tag_size == 128
}

/// Counts of (valid, invalid, acceptable) in the field cipher's groups,
/// read straight from the untyped JSON so the count does not depend on
/// the typed structures the runner uses.
fn expected_counts() -> (usize, usize, usize) {
    let text = std::fs::read_to_string(VECTORS).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (mut valid, mut invalid, mut acceptable) = (0, 0, 0);
    for g in v["testGroups"].as_array().unwrap() {
        if g["keySize"] == 256 && g["ivSize"] == 96 && g["tagSize"] == 128 {
            for t in g["tests"].as_array().unwrap() {
                match t["result"].as_str().unwrap() {
                    "valid" => valid += 1,
                    "invalid" => invalid += 1,
                    "acceptable" => acceptable += 1,
                    other => panic!("unknown result {other:?}"),
                }
            }
        }
    }
    (valid, invalid, acceptable)
}

#[derive(Default, Debug)]
struct Counts {
    valid: usize,
    invalid: usize,
    acceptable: usize,
    acceptable_accepted: Vec<u32>,
}

/// Opens `ct || tag` with `key`, or `None` when the nonce or tag length
/// cannot be expressed (which is itself a rejection).
fn open(key: &AeadKey, iv: &[u8], aad: &[u8], ct: &[u8], tag: &[u8]) -> Option<Vec<u8>> {
    let nonce: &[u8; NONCE_LEN] = iv.try_into().ok()?;
    let tag: &[u8; TAG_LEN] = tag.try_into().ok()?;
    let mut buf = ct.to_vec();
    key.open_in_place(nonce, aad, &mut buf, tag).ok()?;
    Some(buf)
}

fn run_backend(file: &VectorFile, backend: AeadBackend) -> Counts {
    let mut counts = Counts::default();
    for group in file.test_groups.iter().filter(|g| is_field_cipher_group(g)) {
        for t in &group.tests {
            let label = format!("{} tcId {} ({})", backend.name(), t.tc_id, t.comment);
            let key_bytes = unhex(&t.key);
            assert_eq!(key_bytes.len(), KEY_LEN, "{label}");
            let key = AeadKey::new(backend, &SecretBytes::copy_from(&key_bytes)).unwrap();
            let (iv, aad, msg, ct, tag) = (
                unhex(&t.iv),
                unhex(&t.aad),
                unhex(&t.msg),
                unhex(&t.ct),
                unhex(&t.tag),
            );
            match t.result {
                Expect::Valid => {
                    let nonce: &[u8; NONCE_LEN] = iv.as_slice().try_into().unwrap_or_else(|_| {
                        panic!("{label}: valid case with a {}-byte nonce", iv.len())
                    });
                    let mut buf = msg.clone();
                    let sealed_tag = key
                        .seal_in_place(nonce, &aad, &mut buf)
                        .unwrap_or_else(|_| panic!("{label}: seal failed"));
                    assert_eq!(buf, ct, "{label}: ciphertext");
                    assert_eq!(sealed_tag.as_slice(), tag.as_slice(), "{label}: tag");
                    let opened = open(&key, &iv, &aad, &ct, &tag)
                        .unwrap_or_else(|| panic!("{label}: valid case failed to open"));
                    assert_eq!(opened, msg, "{label}: opened plaintext");
                    counts.valid += 1;
                }
                Expect::Invalid => {
                    assert!(
                        open(&key, &iv, &aad, &ct, &tag).is_none(),
                        "{label}: invalid case opened"
                    );
                    counts.invalid += 1;
                }
                Expect::Acceptable => {
                    // Either outcome is allowed; record which one we gave.
                    if open(&key, &iv, &aad, &ct, &tag).is_some() {
                        counts.acceptable_accepted.push(t.tc_id);
                    }
                    counts.acceptable += 1;
                }
            }
        }
    }
    counts
}

#[test]
fn wycheproof_aes_256_gcm_on_every_backend() {
    let file = load();
    assert_eq!(file.algorithm, "AES-GCM");
    let total: usize = file.test_groups.iter().map(|g| g.tests.len()).sum();
    assert_eq!(
        total, file.number_of_tests,
        "numberOfTests matches the file"
    );

    let (valid, invalid, acceptable) = expected_counts();
    assert!(valid > 0 && invalid > 0, "no vectors selected");
    for &backend in AeadBackend::ALL {
        let counts = run_backend(&file, backend);
        println!(
            "wycheproof aes_gcm 256/96/128 on {}: {} valid, {} invalid, {} acceptable \
             (accepted: {:?})",
            backend.name(),
            counts.valid,
            counts.invalid,
            counts.acceptable,
            counts.acceptable_accepted,
        );
        assert_eq!(counts.valid, valid, "{}: valid cases run", backend.name());
        assert_eq!(
            counts.invalid,
            invalid,
            "{}: invalid cases run",
            backend.name()
        );
        assert_eq!(
            counts.acceptable,
            acceptable,
            "{}: acceptable cases seen",
            backend.name()
        );
    }
}

#[test]
fn every_backend_is_compiled_in() {
    #[cfg(feature = "aws-lc")]
    assert_eq!(AeadBackend::ALL.len(), 2, "{:?}", AeadBackend::ALL);
    #[cfg(not(feature = "aws-lc"))]
    assert_eq!(AeadBackend::ALL.len(), 1, "{:?}", AeadBackend::ALL);
}

#[cfg(feature = "aws-lc")]
#[tokio::test]
async fn field_cipher_values_cross_backends() {
    use alvryn_core::crypto::{FieldCipher, FieldContext, KeyMaterial, KeySet, MemoryLedger};

    let key = SecretBytes::copy_from(&[0x5a; KEY_LEN]);
    let make = |backend| {
        FieldCipher::builder(
            KeySet::single(KeyMaterial::fingerprinted(key.clone())),
            std::sync::Arc::new(MemoryLedger::new()),
        )
        .backend(backend)
        .build()
        .unwrap()
    };
    let rust = make(AeadBackend::RustCrypto);
    let aws = make(AeadBackend::AwsLc);
    let ctx = FieldContext::new(
        "provider_tokens",
        "65f1c0ffee0123456789abcd",
        "refresh_token",
    );
    for (from, to) in [(&rust, &aws), (&aws, &rust)] {
        for len in [0usize, 1, 15, 16, 17, 1000] {
            let pt: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let text = from.encrypt(&ctx, &pt).await.unwrap();
            assert_eq!(
                to.decrypt(&ctx, &text).unwrap().expose(),
                pt.as_slice(),
                "{from:?} -> {to:?}, {len} bytes"
            );
        }
    }
}
