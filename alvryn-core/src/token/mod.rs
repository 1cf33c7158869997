//! JWT access and refresh tokens.

pub mod jwt;

pub use jwt::{
    Claims, HmacSecrets, JwtKeys, JwtSettings, MIN_SECRET_BYTES, ShortSecret, TokenError, TokenKind,
};
