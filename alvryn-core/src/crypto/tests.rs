use super::*;

fn key(byte: u8) -> KeyMaterial {
    KeyMaterial::fingerprinted(SecretBytes::copy_from(&[byte; 32]))
}

fn memory() -> Arc<dyn UsageLedger> {
    Arc::new(MemoryLedger::new())
}

fn cipher(keys: KeySet) -> FieldCipher {
    FieldCipher::builder(keys, memory()).build().unwrap()
}

const CTX: FieldContext<'static> = FieldContext {
    collection: "users",
    record_id: "u1",
    field: "secret",
};

#[tokio::test]
async fn round_trip_in_both_forms() {
    let c = cipher(KeySet::single(key(1)));
    let text = c.encrypt(&CTX, b"hello").await.unwrap();
    assert!(text.starts_with("av1:"));
    assert_eq!(c.decrypt(&CTX, &text).unwrap().expose(), b"hello");
    let blob = c.encrypt_bytes(&CTX, b"").await.unwrap();
    assert_eq!(
        blob.len(),
        2 + c.active_key_id().as_str().len() + NONCE_LEN + TAG_LEN
    );
    assert_eq!(c.decrypt_bytes(&CTX, &blob).unwrap().expose(), b"");
}

#[tokio::test]
async fn nonces_differ_between_encryptions() {
    let c = cipher(KeySet::single(key(1)));
    let a = c.encrypt(&CTX, b"same").await.unwrap();
    let b = c.encrypt(&CTX, b"same").await.unwrap();
    assert_ne!(a, b);
}

#[tokio::test]
async fn the_context_is_bound_and_unambiguous() {
    let c = cipher(KeySet::single(key(1)));
    let text = c
        .encrypt(&FieldContext::new("ab", "c", "f"), b"v")
        .await
        .unwrap();
    for other in [
        FieldContext::new("a", "bc", "f"),
        FieldContext::new("ab", "c", "g"),
        FieldContext::new("users", "c", "f"),
        FieldContext::new("ab", "c2", "f"),
    ] {
        assert!(matches!(
            c.decrypt(&other, &text),
            Err(CipherError::Decrypt)
        ));
    }
    // Long contexts take the heap path and still round-trip.
    let long = "x".repeat(1000);
    let ctx = FieldContext::new(&long, &long, &long);
    let text = c.encrypt(&ctx, b"v").await.unwrap();
    assert_eq!(c.decrypt(&ctx, &text).unwrap().expose(), b"v");
}

#[tokio::test]
async fn the_key_id_selects_the_key_and_another_keys_id_fails() {
    let c = cipher(KeySet::single(key(1)).with_previous(key(2)));
    let blob = c.encrypt_bytes(&CTX, b"v").await.unwrap();
    let mut moved = blob.clone();
    let other = key(2).id().as_str().as_bytes().to_vec();
    assert_eq!(other.len(), usize::from(moved[1]));
    moved[2..2 + other.len()].copy_from_slice(&other);
    assert!(matches!(
        c.decrypt_bytes(&CTX, &moved),
        Err(CipherError::Decrypt)
    ));
    // Two ids for the same key bytes are interchangeable (documented):
    // relabelling between them decrypts to the same value.
    let bytes = SecretBytes::copy_from(&[9u8; 32]);
    let a = KeyMaterial::new(KeyId::new("aa").unwrap(), bytes.clone());
    let b = KeyMaterial::new(KeyId::new("bb").unwrap(), bytes);
    let c = cipher(KeySet::single(a).with_previous(b));
    let mut blob = c.encrypt_bytes(&CTX, b"v").await.unwrap();
    blob[2..4].copy_from_slice(b"bb");
    assert_eq!(c.decrypt_bytes(&CTX, &blob).unwrap().expose(), b"v");
}

/// A ciphertext made once and frozen here: if the format or the
/// associated data ever change, stored values stop decrypting, and this
/// test says so.
#[test]
fn a_frozen_ciphertext_still_decrypts_on_every_backend() {
    const FROZEN: &str = "av1:ARFrMDgyMDk5ZDdhMjM2NTBmMka2Dkx4q2FofMIf_U86RnexK0kU32WOVyUnbIJwGSQNlYon3nxxsg6iLNLKYw";
    for &backend in AeadBackend::ALL {
        let c = FieldCipher::builder(KeySet::single(key(7)), memory())
            .backend(backend)
            .build()
            .unwrap();
        let ctx = FieldContext::new("provider_tokens", "65f1c0ffee", "refresh_token");
        assert_eq!(
            c.decrypt(&ctx, FROZEN).unwrap().expose(),
            b"known answer \xf0\x9f\x94\x91",
            "{backend:?}"
        );
        let moved = FieldContext::new("provider_tokens", "65f1c0ffef", "refresh_token");
        assert!(c.decrypt(&moved, FROZEN).is_err());
    }
}

#[tokio::test]
async fn associated_data_lengths_at_the_padding_and_stack_boundaries() {
    let c = cipher(KeySet::single(key(1)));
    // 1 version byte + 3 one-byte lengths + the parts.
    for (parts_len, padded) in [(60, 64), (61, 128), (124, 128), (125, 192), (400, 448)] {
        let collection = "c".repeat(parts_len);
        let ctx = FieldContext::new(&collection, "", "");
        let aad = with_aad(&ctx, <[u8]>::to_vec).unwrap();
        assert_eq!(aad.len(), padded, "{parts_len}");
        let text = c.encrypt(&ctx, b"v").await.unwrap();
        assert_eq!(c.decrypt(&ctx, &text).unwrap().expose(), b"v");
        let shorter = FieldContext::new(&collection[1..], "", "");
        assert!(c.decrypt(&shorter, &text).is_err());
    }
}

#[test]
fn varints_are_leb128() {
    for (n, bytes) in [
        (0usize, &[0x00u8][..]),
        (1, &[0x01]),
        (127, &[0x7f]),
        (128, &[0x80, 0x01]),
        (300, &[0xac, 0x02]),
        (16_383, &[0xff, 0x7f]),
        (16_384, &[0x80, 0x80, 0x01]),
    ] {
        let mut buf = [0u8; 10];
        let end = put_varint(&mut buf, 0, n);
        assert_eq!(&buf[..end], bytes, "{n}");
        assert_eq!(varint_len(n), bytes.len(), "{n}");
    }
    assert_eq!(varint_len(usize::MAX), usize::BITS.div_ceil(7) as usize);
}

#[test]
fn associated_data_is_version_varint_parts_and_zero_padding() {
    let ctx = FieldContext::new("users", "u1", "secret");
    let aad = with_aad(&ctx, <[u8]>::to_vec).unwrap();
    let mut expected = b"\x01\x05users\x02u1\x06secret".to_vec();
    expected.resize(64, 0);
    assert_eq!(aad, expected);
    // A 200-byte record id takes a two-byte length and the heap path.
    let long = "r".repeat(200);
    let aad = with_aad(&FieldContext::new("c", &long, "f"), <[u8]>::to_vec).unwrap();
    assert_eq!(aad.len(), 256);
    assert_eq!(&aad[..5], b"\x01\x01c\xc8\x01");
    assert_eq!(&aad[205..208], b"\x01f\x00");
}

#[tokio::test]
async fn malformed_input_is_an_error_never_a_panic() {
    let c = cipher(KeySet::single(key(1)));
    let blob = c.encrypt_bytes(&CTX, b"some value").await.unwrap();
    for len in 0..blob.len() {
        assert!(
            c.decrypt_bytes(&CTX, &blob[..len]).is_err(),
            "truncated to {len}"
        );
    }
    let mut bad_version = blob.clone();
    bad_version[0] = 2;
    assert!(c.decrypt_bytes(&CTX, &bad_version).is_err());
    let mut zero_id = blob.clone();
    zero_id[1] = 0;
    assert!(c.decrypt_bytes(&CTX, &zero_id).is_err());
    let mut huge_id = blob.clone();
    huge_id[1] = 255;
    assert!(c.decrypt_bytes(&CTX, &huge_id).is_err());
    for text in [
        "",
        "av1:",
        "av1:!!!!",
        "av2:AAAA",
        "plain text",
        "av1:AQ",
        "av1:\u{0}\u{ffff}",
    ] {
        assert!(
            matches!(c.decrypt(&CTX, text), Err(CipherError::Decrypt)),
            "{text:?}"
        );
    }
}

#[tokio::test]
async fn unknown_keys_fail_and_key_id_of_names_them() {
    let old = cipher(KeySet::single(key(1)));
    let text = old.encrypt(&CTX, b"v").await.unwrap();
    let other = cipher(KeySet::single(key(2)));
    assert!(matches!(
        other.decrypt(&CTX, &text),
        Err(CipherError::Decrypt)
    ));
    assert_eq!(
        FieldCipher::key_id_of(&text).as_ref(),
        Some(old.active_key_id())
    );
    assert_eq!(FieldCipher::key_id_of("nonsense"), None);
}

#[tokio::test]
async fn rotation_keeps_old_values_readable_and_seals_new_ones_with_the_new_key() {
    let before = cipher(KeySet::single(key(1)));
    let old_text = before.encrypt(&CTX, b"old").await.unwrap();
    let after = cipher(KeySet::single(key(2)).with_previous(key(1)));
    assert_eq!(after.decrypt(&CTX, &old_text).unwrap().expose(), b"old");
    let new_text = after.encrypt(&CTX, b"new").await.unwrap();
    assert_eq!(
        FieldCipher::key_id_of(&new_text).as_ref(),
        Some(after.active_key_id())
    );
    assert_ne!(after.active_key_id(), before.active_key_id());
    assert!(
        before.decrypt(&CTX, &new_text).is_err(),
        "the old key alone cannot read new values"
    );
}

#[test]
fn duplicate_or_wrong_length_keys_are_rejected() {
    let dup = KeySet::single(key(1)).with_previous(key(1));
    assert!(matches!(
        FieldCipher::builder(dup, memory()).build(),
        Err(CipherError::InvalidKeySet(_))
    ));
    let short = KeyMaterial::fingerprinted(SecretBytes::copy_from(&[1u8; 31]));
    let err = FieldCipher::builder(KeySet::single(short), memory())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("found 31"), "{err}");
}

#[tokio::test]
async fn the_limit_is_enforced_across_ciphers_sharing_a_ledger() {
    let ledger: Arc<dyn UsageLedger> = Arc::new(MemoryLedger::new());
    let make = || {
        FieldCipher::builder(KeySet::single(key(1)), Arc::clone(&ledger))
            .block_size(3)
            .limit(10)
            .build()
            .unwrap()
    };
    // Two "processes" with one ledger.
    let (a, b) = (make(), make());
    let mut ok = 0;
    for i in 0..20 {
        let c = if i % 2 == 0 { &a } else { &b };
        match c.encrypt(&CTX, b"v").await {
            Ok(_) => ok += 1,
            Err(CipherError::KeyExhausted { limit: 10, .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    // Each reserved whole blocks; what one holds the other cannot use,
    // so the sum performed is at most the limit.
    assert!(ok <= 10, "{ok} encryptions exceeded the limit");
    assert!(
        ok >= 8,
        "only {ok} encryptions; blocks should be granted up to the limit"
    );
    assert_eq!(
        ledger.reserved(a.active_key_fingerprint()).await.unwrap(),
        10
    );
    assert_eq!(a.usage().limit, 10);
    assert_eq!(a.usage().performed_here + b.usage().performed_here, ok);
    // Decryption is never refused for an exhausted key.
    let c = FieldCipher::builder(KeySet::single(key(1)), memory())
        .build()
        .unwrap();
    let t = c.encrypt(&CTX, b"v").await.unwrap();
    assert!(a.decrypt(&CTX, &t).is_ok());
}

#[tokio::test]
async fn usage_reports_the_reserved_total() {
    let c = FieldCipher::builder(KeySet::single(key(1)), memory())
        .block_size(100)
        .build()
        .unwrap();
    assert_eq!(c.usage().reserved_total, 0);
    for _ in 0..5 {
        c.encrypt(&CTX, b"v").await.unwrap();
    }
    let u = c.usage();
    assert_eq!(
        (u.reserved_total, u.performed_here, u.limit),
        (100, 5, MAX_ENCRYPTIONS_PER_KEY)
    );
}

struct BrokenLedger;

#[async_trait::async_trait]
impl UsageLedger for BrokenLedger {
    async fn reserve(
        &self,
        _: &KeyFingerprint,
        _: u64,
        _: u64,
    ) -> Result<Reservation, LedgerError> {
        Err(LedgerError::Storage("disk full".into()))
    }
    async fn reserved(&self, _: &KeyFingerprint) -> Result<u64, LedgerError> {
        Err(LedgerError::Storage("disk full".into()))
    }
}

#[tokio::test]
async fn no_encryption_without_a_ledger_grant() {
    let c = FieldCipher::builder(KeySet::single(key(1)), Arc::new(BrokenLedger))
        .build()
        .unwrap();
    assert!(matches!(
        c.encrypt(&CTX, b"v").await,
        Err(CipherError::Ledger(_))
    ));
    assert_eq!(c.usage().performed_here, 0);
}

#[tokio::test]
async fn the_file_ledger_carries_the_count_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.json");
    for _ in 0..3 {
        let c = FieldCipher::builder(KeySet::single(key(1)), Arc::new(FileLedger::new(&path)))
            .block_size(4)
            .limit(10)
            .build()
            .unwrap();
        let _ = c.encrypt(&CTX, b"v").await;
    }
    // Three restarts, one block each (4 + 4 + 2 at the limit).
    let c = FieldCipher::builder(KeySet::single(key(1)), Arc::new(FileLedger::new(&path)))
        .block_size(4)
        .limit(10)
        .build()
        .unwrap();
    assert!(matches!(
        c.encrypt(&CTX, b"v").await,
        Err(CipherError::KeyExhausted { .. })
    ));
}

fn labelled(label: &str, byte: u8) -> KeyMaterial {
    KeyMaterial::new(
        KeyId::new(label).unwrap(),
        SecretBytes::copy_from(&[byte; 32]),
    )
}

#[tokio::test]
async fn the_ledger_counts_key_bytes_not_labels() {
    let ledger: Arc<dyn UsageLedger> = Arc::new(MemoryLedger::new());
    let make = |km: KeyMaterial| {
        FieldCipher::builder(KeySet::single(km), Arc::clone(&ledger))
            .first_block(10)
            .build()
            .unwrap()
    };
    // The same bytes under two labels: one count.
    let a = make(labelled("label-a", 5));
    let b = make(labelled("label-b", 5));
    a.encrypt(&CTX, b"v").await.unwrap();
    b.encrypt(&CTX, b"v").await.unwrap();
    assert_eq!(a.active_key_fingerprint(), b.active_key_fingerprint());
    assert_eq!(
        ledger.reserved(a.active_key_fingerprint()).await.unwrap(),
        20
    );
    // Two keys under one label: two counts.
    let c = make(labelled("label-a", 6));
    c.encrypt(&CTX, b"v").await.unwrap();
    assert_ne!(c.active_key_fingerprint(), a.active_key_fingerprint());
    assert_eq!(
        ledger.reserved(c.active_key_fingerprint()).await.unwrap(),
        10
    );
    assert_eq!(
        ledger.reserved(a.active_key_fingerprint()).await.unwrap(),
        20
    );
    // Nothing is counted under a label.
    let label = KeyFingerprint::legacy_label(&KeyId::new("label-a").unwrap());
    assert_eq!(ledger.reserved(&label).await.unwrap(), 0);
}

#[tokio::test]
async fn a_count_kept_under_the_label_is_carried_over_once() {
    let ledger = MemoryLedger::new();
    // What an earlier version left: 1000 encryptions under the label.
    let label = KeyFingerprint::legacy_label(&KeyId::new("primary").unwrap());
    ledger.reserve(&label, 1000, 5000).await.unwrap();
    let shared: Arc<dyn UsageLedger> = Arc::new(ledger.clone());
    let make = || {
        FieldCipher::builder(KeySet::single(labelled("primary", 8)), Arc::clone(&shared))
            .first_block(10)
            .limit(5000)
            .build()
            .unwrap()
    };
    let c = make();
    c.encrypt(&CTX, b"v").await.unwrap();
    let fp = c.active_key_fingerprint().clone();
    assert_eq!(ledger.reserved(&fp).await.unwrap(), 1010);
    assert_eq!(c.usage().reserved_total, 1010);
    // Only the block is usable here, not the carried count.
    assert_eq!(c.usage().performed_here, 1);
    // The next start finds the fingerprint counted: nothing carried again.
    make().encrypt(&CTX, b"v").await.unwrap();
    assert_eq!(ledger.reserved(&fp).await.unwrap(), 1020);
    // A carried count past the limit leaves nothing to encrypt with.
    let full = MemoryLedger::new();
    full.reserve(&label, 5000, 5000).await.unwrap();
    let c = FieldCipher::builder(KeySet::single(labelled("primary", 8)), Arc::new(full))
        .limit(5000)
        .build()
        .unwrap();
    assert!(matches!(
        c.encrypt(&CTX, b"v").await,
        Err(CipherError::KeyExhausted { limit: 5000, .. })
    ));
}

#[tokio::test]
async fn blocks_start_small_and_double_up_to_the_maximum() {
    let ledger: Arc<dyn UsageLedger> = Arc::new(MemoryLedger::new());
    let c = FieldCipher::builder(KeySet::single(key(1)), Arc::clone(&ledger))
        .first_block(2)
        .block_size(16)
        .build()
        .unwrap();
    let mut totals = Vec::new();
    for _ in 0..(2 + 4 + 8 + 16 + 16 + 1) {
        c.encrypt_bytes(&CTX, b"").await.unwrap();
        let t = c.usage().reserved_total;
        if totals.last() != Some(&t) {
            totals.push(t);
        }
    }
    assert_eq!(totals, [2, 6, 14, 30, 46, 62]);
}

/// Issue 8: a process that starts often must not burn a whole block of
/// the key per start.
#[tokio::test]
async fn ledger_blocks_after_repeated_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.json");
    let ledger = FileLedger::new(&path);
    let mut fingerprint = None;
    for _ in 0..20 {
        let c = FieldCipher::builder(KeySet::single(key(1)), Arc::new(ledger.clone()))
            .build()
            .unwrap();
        let text = c.encrypt(&CTX, b"v").await.unwrap();
        assert_eq!(c.decrypt(&CTX, &text).unwrap().expose(), b"v");
        fingerprint = Some(c.active_key_fingerprint().clone());
    }
    let total = ledger.reserved(&fingerprint.unwrap()).await.unwrap();
    assert_eq!(total, 20 * DEFAULT_FIRST_BLOCK);
    assert_eq!(total, 20 * 256, "not 20 * 65,536");
}

/// A long-running cipher grows its blocks to the default maximum.
#[tokio::test]
async fn a_long_running_cipher_reaches_full_blocks() {
    let ledger: Arc<dyn UsageLedger> = Arc::new(MemoryLedger::new());
    let c = FieldCipher::builder(KeySet::single(key(1)), Arc::clone(&ledger))
        .build()
        .unwrap();
    // 256 + 512 + ... + 32,768 = 65,280 encryptions use every block below
    // the maximum; the next one reserves a full block.
    for _ in 0..65_280 {
        c.encrypt_bytes(&CTX, b"").await.unwrap();
    }
    assert_eq!(c.usage().reserved_total, 65_280);
    c.encrypt_bytes(&CTX, b"").await.unwrap();
    assert_eq!(c.usage().reserved_total, 65_280 + DEFAULT_BLOCK);
    assert_eq!(DEFAULT_BLOCK, 65_536);
}

#[test]
fn nonces_come_from_each_backends_generator_and_differ() {
    for &backend in AeadBackend::ALL {
        let k = AeadKey::new(backend, &SecretBytes::copy_from(&[1u8; 32])).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(k.random_nonce().unwrap()), "{backend:?}");
        }
    }
}

/// The text form is decoded in group-aligned pieces straight into the
/// plaintext buffer; every split of header, ciphertext and tag across
/// base64 groups must round-trip, and any altered character must fail.
#[tokio::test]
async fn the_text_form_decodes_in_place_at_every_alignment() {
    for id_len in [1usize, 2, 3, 4, 17, 62, 63, 64] {
        let km = labelled(&"i".repeat(id_len), 3);
        let c = cipher(KeySet::single(km));
        for len in (0..40).chain([47, 48, 49, 1000, 1001, 1002]) {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let text = c.encrypt(&CTX, &pt).await.unwrap();
            assert_eq!(c.decrypt(&CTX, &text).unwrap().expose(), &pt[..]);
            // The same bytes as the binary form.
            let blob = base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                &text[4..],
            )
            .unwrap();
            assert_eq!(c.decrypt_bytes(&CTX, &blob).unwrap().expose(), &pt[..]);
            for at in [4, 5, text.len() / 2, text.len() - 2, text.len() - 1] {
                let mut bad = text.clone().into_bytes();
                bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
                let bad = String::from_utf8(bad).unwrap();
                assert!(c.decrypt(&CTX, &bad).is_err(), "{id_len} {len} {at}");
            }
            assert_eq!(
                FieldCipher::key_id_of(&text).as_ref(),
                Some(c.active_key_id())
            );
        }
    }
}

/// Unpadded base64 whose last character carries bits beyond the value is
/// not canonical: rejected, as the `base64` crate did before.
#[tokio::test]
async fn non_canonical_trailing_bits_are_rejected() {
    let c = cipher(KeySet::single(key(1)));
    let mut found = 0;
    for len in 0..6 {
        let text = c.encrypt(&CTX, &vec![7u8; len]).await.unwrap();
        let b64 = &text[4..];
        let spare_bits = match b64.len() % 4 {
            2 => 4,
            3 => 2,
            _ => continue,
        };
        found += 1;
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = b64.as_bytes()[b64.len() - 1];
        let v = alphabet.iter().position(|&a| a == last).unwrap();
        assert_eq!(v & ((1 << spare_bits) - 1), 0);
        let mut bad = text.clone().into_bytes();
        *bad.last_mut().unwrap() = alphabet[v | 1];
        let bad = String::from_utf8(bad).unwrap();
        assert!(matches!(c.decrypt(&CTX, &bad), Err(CipherError::Decrypt)));
        let old =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &bad[4..]);
        assert!(old.is_err(), "the base64 crate rejects it too");
    }
    assert!(found > 0);
}
