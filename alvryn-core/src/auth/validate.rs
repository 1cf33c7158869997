//! What counts as an email address and a strong enough password.

/// Why an email address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEmail {
    /// Longer than 254 bytes, or a local part over 64.
    #[error("the email address is too long")]
    TooLong,
    /// Not `local@domain` with an allowed local part and a valid domain.
    #[error("the email address is not valid")]
    Malformed,
}

/// Why a password was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WeakPassword {
    /// Fewer than 8 characters.
    #[error("the password must be at least 8 characters long")]
    TooShort,
    /// More than 1024 bytes.
    #[error("the password must be at most 1024 bytes long")]
    TooLong,
    /// Easy to guess (zxcvbn score below 3): a common password, a pattern,
    /// or the email itself.
    #[error("the password is too easy to guess; use a longer phrase or more varied characters")]
    Guessable,
    /// Contains control characters.
    #[error("the password contains control characters")]
    ControlCharacters,
}

/// Shortest password, in characters (NIST SP 800-63B).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~-".contains(&c)
}

/// Validates and normalizes an email address: trimmed, the local part
/// lower-cased (addresses are unique case-insensitively), the domain
/// converted to lower-case ASCII (IDNA, so `bücher.example` and
/// `xn--bcher-kva.example` are one address). Quoted local parts and
/// non-ASCII local parts are refused.
///
/// # Errors
/// [`InvalidEmail`].
pub fn normalize_email(input: &str) -> Result<String, InvalidEmail> {
    let s = input.trim();
    if s.len() > 254 * 4 {
        return Err(InvalidEmail::TooLong);
    }
    let (local, domain) = s.rsplit_once('@').ok_or(InvalidEmail::Malformed)?;
    if local.is_empty() || local.len() > 64 {
        return Err(if local.len() > 64 {
            InvalidEmail::TooLong
        } else {
            InvalidEmail::Malformed
        });
    }
    let lb = local.as_bytes();
    if !lb.iter().all(|&c| is_atext(c) || c == b'.')
        || lb[0] == b'.'
        || lb[lb.len() - 1] == b'.'
        || local.contains("..")
    {
        return Err(InvalidEmail::Malformed);
    }
    if domain.len() > 253 {
        return Err(InvalidEmail::TooLong);
    }
    if domain.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(InvalidEmail::Malformed);
    }
    let domain = idna::domain_to_ascii_strict(domain).map_err(|_| InvalidEmail::Malformed)?;
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if labels.len() < 2
        || !labels.iter().all(label_ok)
        || labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err(InvalidEmail::Malformed);
    }
    let email = format!(
        "{}@{}",
        local.to_ascii_lowercase(),
        domain.to_ascii_lowercase()
    );
    if email.len() > 254 {
        return Err(InvalidEmail::TooLong);
    }
    Ok(email)
}

/// Checks a new password: 8 characters to 1024 bytes, no control
/// characters, and not easily guessed (zxcvbn score 3 or more, with the
/// email as a known input, judged on the first 100 characters).
///
/// zxcvbn takes up to milliseconds of CPU: call this off the async
/// executor ([`PasswordHasher::hash_new`](super::PasswordHasher::hash_new)
/// runs it on a hashing worker). Debug builds assert it.
///
/// # Errors
/// [`WeakPassword`].
pub fn check_password(password: &str, email: &str) -> Result<(), WeakPassword> {
    debug_assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "check_password is CPU-heavy: run it off the async executor"
    );
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(WeakPassword::TooLong);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(WeakPassword::TooShort);
    }
    if password.chars().any(char::is_control) {
        return Err(WeakPassword::ControlCharacters);
    }
    // zxcvbn is superlinear in the input; the first 100 characters decide.
    let head: String = password.chars().take(100).collect();
    let local = email.split('@').next().unwrap_or_default();
    let estimate = zxcvbn::zxcvbn(&head, &[email, local]);
    if (estimate.score() as u8) < 3 {
        return Err(WeakPassword::Guessable);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized() {
        assert_eq!(
            normalize_email("  Alice.Smith+tag@Example.COM ").unwrap(),
            "alice.smith+tag@example.com"
        );
        assert_eq!(
            normalize_email("a@bücher.example").unwrap(),
            "a@xn--bcher-kva.example"
        );
        assert_eq!(
            normalize_email("a@BÜCHER.example").unwrap(),
            normalize_email("a@xn--bcher-kva.example").unwrap()
        );
    }

    #[test]
    fn bad_emails_are_refused() {
        for e in [
            "",
            "@",
            "alice",
            "alice@",
            "@example.com",
            "alice@example",
            "alice@@example.com",
            "al ice@example.com",
            ".alice@example.com",
            "alice.@example.com",
            "al..ice@example.com",
            "\"quoted\"@example.com",
            "álice@example.com",
            "alice@exa mple.com",
            "alice@-example.com",
            "alice@example.123",
            "alice@exam\u{202e}ple.com",
            "alice\u{200b}@example.com",
            "alice@example.com\u{0}",
            "a@b@c.com",
        ] {
            assert!(normalize_email(e).is_err(), "{e:?} accepted");
        }
        assert_eq!(
            normalize_email(&format!("{}@example.com", "a".repeat(65))),
            Err(InvalidEmail::TooLong)
        );
        assert_eq!(
            normalize_email(&format!("a@{}.com", "b".repeat(10_000))),
            Err(InvalidEmail::TooLong)
        );
        let long_domain = format!("a@{}.com", vec!["b".repeat(60); 5].join("."));
        assert_eq!(normalize_email(&long_domain), Err(InvalidEmail::TooLong));
    }

    #[test]
    fn password_policy() {
        assert_eq!(
            check_password("short", "a@b.co"),
            Err(WeakPassword::TooShort)
        );
        assert_eq!(
            check_password("password123", "a@b.co"),
            Err(WeakPassword::Guessable)
        );
        assert_eq!(
            check_password("aaaaaaaaaaaaaaaa", "a@b.co"),
            Err(WeakPassword::Guessable)
        );
        assert_eq!(
            check_password("alice.smith2024", "alice.smith2024@example.com"),
            Err(WeakPassword::Guessable)
        );
        assert_eq!(
            check_password("tab\there-is-a-control", "a@b.co"),
            Err(WeakPassword::ControlCharacters)
        );
        assert_eq!(
            check_password(&"x".repeat(1025), "a@b.co"),
            Err(WeakPassword::TooLong)
        );
        assert!(check_password("correct horse battery staple", "a@b.co").is_ok());
        assert!(check_password("Zq8#vL2!mW9p", "a@b.co").is_ok());
        // Long unusual input is checked quickly and accepted on its head.
        assert!(check_password(&"correct horse battery staple ".repeat(30), "a@b.co").is_ok());
    }

    #[tokio::test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "off the async executor")]
    async fn the_strength_check_refuses_to_run_on_the_executor() {
        let _ = check_password("correct horse battery staple", "a@b.co");
    }
}
