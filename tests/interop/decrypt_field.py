#!/usr/bin/env python3
"""Decrypt an Alvryn field ciphertext (text form) with nothing but the
README's description of the format and the `cryptography` package.

usage: decrypt_field.py KEY_B64 COLLECTION RECORD_ID FIELD CIPHERTEXT
prints the plaintext as hex; exits 1 if it does not decrypt.
"""
import base64
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def b64url_decode(text: str) -> bytes:
    # Strict, as the README asks: the alphabet only, and canonical (the
    # unused trailing bits zero), which re-encoding checks.
    raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != text:
        raise ValueError("non-canonical base64")
    return raw


def leb128(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decrypt(key: bytes, collection: str, record_id: str, field: str, text: str) -> bytes:
    if not text.startswith("av1:"):
        raise ValueError("not an av1 ciphertext")
    blob = b64url_decode(text[4:])
    version, id_len = blob[0], blob[1]
    if version != 1 or not 1 <= id_len <= 64:
        raise ValueError("unsupported header")
    nonce = blob[2 + id_len : 14 + id_len]
    sealed = blob[14 + id_len :]  # ciphertext || tag, as AESGCM expects
    aad = bytes([version])
    for part in (collection, record_id, field):
        raw = part.encode("utf-8")
        aad += leb128(len(raw)) + raw
    aad += b"\x00" * (-len(aad) % 64)
    return AESGCM(key).decrypt(nonce, sealed, aad)


if __name__ == "__main__":
    key_b64, collection, record_id, field, text = sys.argv[1:6]
    try:
        plain = decrypt(base64.b64decode(key_b64), collection, record_id, field, text)
    except Exception as exc:  # noqa: BLE001 - report any failure as "does not decrypt"
        print(f"does not decrypt: {type(exc).__name__}", file=sys.stderr)
        sys.exit(1)
    print(plain.hex())
