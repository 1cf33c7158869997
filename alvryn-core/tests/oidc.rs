//! ID-token verification against the test OpenID provider (filled in next).
