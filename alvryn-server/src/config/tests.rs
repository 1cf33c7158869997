use std::collections::HashMap;

use super::*;

const KEY_B64: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // base64 of 32 bytes
const JWT: &str = "jwt-secret-that-is-long-enough-0123456789";
const JWT_REFRESH: &str = "refresh-secret-that-is-long-enough-012345";
const STRIPE_KEY: &str = "sk_test_51SuperSecretStripeKey";
const WHSEC: &str = "whsec_SuperSecretSigningSecret";
const GOOGLE_SECRET: &str = "GOCSPX-google-client-secret";

fn production() -> HashMap<&'static str, String> {
    [
        ("ALVRYN_ENV", "production"),
        (
            "MONGO_URI",
            "mongodb://user:mongopass@db.internal:27017/alvryn",
        ),
        ("JWT_SECRET", JWT),
        ("JWT_REFRESH_SECRET", JWT_REFRESH),
        ("BACKEND_URL", "https://api.example.com"),
        ("FRONTEND_URL", "https://app.example.com"),
        ("STRIPE_SECRET_KEY", STRIPE_KEY),
        ("STRIPE_WEBHOOK_SECRET", WHSEC),
        ("STRIPE_PRICE_MAP", "price_1PgafmB7WZ01zgkW6dKueIc5:pro"),
        ("STRIPE_EVENT_S3_BUCKET", "alvryn-stripe-events"),
        ("GOOGLE_CLIENT_ID", "123.apps.googleusercontent.com"),
        ("GOOGLE_CLIENT_SECRET", GOOGLE_SECRET),
        ("FIELD_ENCRYPTION_KEY", KEY_B64),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

fn load(env: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
    Config::from_lookup(
        &|name| env.get(name).map(OsString::from),
        &Overrides::default(),
    )
}

/// Every secret value used in these tests: none may appear in any output.
fn assert_no_secret(text: &str, env: &HashMap<&'static str, String>) {
    let mut secrets = vec![
        KEY_B64,
        JWT,
        JWT_REFRESH,
        STRIPE_KEY,
        WHSEC,
        GOOGLE_SECRET,
        "mongopass",
    ];
    for var in [
        "FIELD_ENCRYPTION_KEY",
        "JWT_SECRET",
        "STRIPE_SECRET_KEY",
        "MONGO_URI",
    ] {
        if let Some(v) = env.get(var) {
            secrets.push(v.as_str());
        }
    }
    for s in secrets.into_iter().filter(|s| s.len() >= 6) {
        assert!(
            !text.contains(s),
            "output contains a secret value {s:?}:\n{text}"
        );
    }
}

fn problems_for(env: &HashMap<&'static str, String>) -> Vec<Problem> {
    let err = load(env).expect_err("expected a configuration error");
    assert_no_secret(&err.to_string(), env);
    assert_no_secret(&format!("{err:?}"), env);
    err.problems
}

fn has(problems: &[Problem], var: &str, needle: &str) -> bool {
    problems
        .iter()
        .any(|p| p.var == var && p.message.contains(needle))
}

#[test]
fn an_empty_environment_is_a_working_development_setup() {
    let cfg = load(&HashMap::new()).unwrap();
    assert_eq!(cfg.mode, Mode::Development);
    assert_eq!(cfg.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(cfg.data_dir, PathBuf::from("./alvryn-data"));
    assert!(matches!(cfg.field_keys, FieldKeys::DevGenerated));
    assert!(cfg.stripe.is_none() && cfg.mongo_uri.is_none() && cfg.jwt_secret.is_none());
    assert_eq!(cfg.backend_url.as_str(), "http://127.0.0.1:8080/");
}

#[test]
fn a_complete_production_environment_loads_and_never_prints_secrets() {
    let env = production();
    let cfg = load(&env).unwrap();
    assert_eq!(cfg.mode, Mode::Production);
    assert!(matches!(cfg.field_keys, FieldKeys::Static { .. }));
    assert_eq!(cfg.stripe.as_ref().unwrap().price_map.len(), 1);
    assert_no_secret(&format!("{cfg:?}"), &env);
    let described = format!("{:?}", cfg.describe());
    assert_no_secret(&described, &env);
    assert!(described.contains("price_1PgafmB7WZ01zgkW6dKueIc5:pro"));
}

#[test]
fn production_with_nothing_set_names_every_missing_value_at_once() {
    let env: HashMap<_, _> = [("ALVRYN_ENV", "production".to_owned())]
        .into_iter()
        .collect();
    let p = problems_for(&env);
    for var in [
        "MONGO_URI",
        "JWT_SECRET",
        "JWT_REFRESH_SECRET",
        "BACKEND_URL",
        "FRONTEND_URL",
        "STRIPE_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "STRIPE_PRICE_MAP",
        "FIELD_ENCRYPTION_KEY",
    ] {
        assert!(has(&p, var, "required"), "{var} not reported: {p:?}");
    }
    let text = ConfigError {
        problems: p.clone(),
    }
    .to_string();
    assert!(text.starts_with(&format!("the configuration has {} problem(s)", p.len())));
}

#[test]
fn a_31_byte_key_names_the_variable_and_the_length() {
    let mut env = production();
    env.insert(
        "FIELD_ENCRYPTION_KEY",
        "0123456789abcdef0123456789abcde".to_owned(),
    );
    let p = problems_for(&env);
    assert!(has(&p, "FIELD_ENCRYPTION_KEY", "31 bytes"), "{p:?}");
    assert_eq!(p.len(), 1, "{p:?}");
}

#[test]
fn bad_base64_is_reported_without_the_value() {
    let mut env = production();
    env.insert(
        "FIELD_ENCRYPTION_KEY",
        "this-is-not*base64*at-all!!".to_owned(),
    );
    let p = problems_for(&env);
    assert!(has(&p, "FIELD_ENCRYPTION_KEY", "not valid base64"), "{p:?}");
    let mut env = production();
    env.insert("FIELD_ENCRYPTION_KEY_ENC", "%%%".to_owned());
    env.remove("FIELD_ENCRYPTION_KEY");
    assert!(has(
        &problems_for(&env),
        "FIELD_ENCRYPTION_KEY_ENC",
        "not valid base64"
    ));
}

#[test]
fn base64_of_the_wrong_length_is_reported() {
    let mut env = production();
    env.insert("FIELD_ENCRYPTION_KEY", "c2hvcnQta2V5".to_owned()); // "short-key"
    assert!(has(
        &problems_for(&env),
        "FIELD_ENCRYPTION_KEY",
        "decodes from base64 to 9 bytes"
    ));
}

#[test]
fn both_key_sources_at_once_is_an_error() {
    let mut env = production();
    env.insert("FIELD_ENCRYPTION_KEY_ENC", "AQIDBA==".to_owned());
    assert!(has(&problems_for(&env), "FIELD_ENCRYPTION_KEY", "not both"));
}

#[test]
fn previous_keys_are_parsed_and_checked() {
    let mut env = production();
    env.insert(
        "FIELD_ENCRYPTION_PREVIOUS_KEYS",
        format!("{KEY_B64}, {KEY_B64}"),
    );
    match load(&env).unwrap().field_keys {
        FieldKeys::Static { previous, .. } => assert_eq!(previous.len(), 2),
        other => panic!("{other:?}"),
    }
    env.insert(
        "FIELD_ENCRYPTION_PREVIOUS_KEYS",
        format!("{KEY_B64},c2hvcnQ="),
    );
    assert!(has(
        &problems_for(&env),
        "FIELD_ENCRYPTION_PREVIOUS_KEYS",
        "entry 2"
    ));
}

#[test]
fn bad_price_maps_are_reported() {
    for (var, value, needle) in [
        (
            "STRIPE_PRICE_MAP",
            "price_abc=pro",
            "entry 1 is not of the form",
        ),
        (
            "STRIPE_PRICE_MAP",
            "price_abc:pro,prod_x:team",
            "entry 2: price ids",
        ),
        ("STRIPE_PRICE_MAP_JSON", "{\"price_abc\": 5}", "entry 1"),
        ("STRIPE_PRICE_MAP_JSON", "not json", "not a JSON object"),
    ] {
        let mut env = production();
        env.remove("STRIPE_PRICE_MAP");
        env.insert(var, value.to_owned());
        let p = problems_for(&env);
        assert!(has(&p, var, needle), "{value}: {p:?}");
        assert_eq!(p.len(), 1, "{p:?}");
    }
    let mut env = production();
    env.insert(
        "STRIPE_PRICE_MAP_JSON",
        "{\"price_abc\":\"pro\"}".to_owned(),
    );
    assert!(has(&problems_for(&env), "STRIPE_PRICE_MAP", "not both"));
}

#[test]
fn weak_or_equal_jwt_secrets_are_rejected() {
    let mut env = production();
    env.insert("JWT_SECRET", "short-secret".to_owned());
    env.insert("JWT_REFRESH_SECRET", "short-secret".to_owned());
    let p = problems_for(&env);
    assert!(has(&p, "JWT_SECRET", "12 bytes long"), "{p:?}");
    let mut env = production();
    env.insert("JWT_REFRESH_SECRET", JWT.to_owned());
    assert!(has(
        &problems_for(&env),
        "JWT_REFRESH_SECRET",
        "must differ"
    ));
}

#[test]
fn malformed_values_of_every_other_kind_are_reported_together() {
    let mut env = production();
    env.insert("MONGO_URI", "postgres://user:mongopass@x".to_owned());
    env.insert("BACKEND_URL", "http://api.example.com".to_owned());
    env.insert("FRONTEND_URL", "not a url".to_owned());
    env.insert("STRIPE_SECRET_KEY", "pk_live_publishable".to_owned());
    env.insert("STRIPE_WEBHOOK_SECRET", "secret_without_prefix".to_owned());
    env.insert("STRIPE_EVENT_S3_BUCKET", "Bad_Bucket".to_owned());
    env.insert("STRIPE_API_BASE", "http://stripe.example.com".to_owned());
    env.insert("STRIPE_WEBHOOK_TOLERANCE_SECONDS", "0".to_owned());
    env.insert("STRIPE_EVENT_S3_PREFIX", "/../events".to_owned());
    env.remove("GOOGLE_CLIENT_ID");
    env.insert("MICROSOFT_CLIENT_ID", "ms-app".to_owned());
    env.insert("ALVRYN_BIND", "everywhere".to_owned());
    let p = problems_for(&env);
    for (var, needle) in [
        ("MONGO_URI", "mongodb://"),
        ("BACKEND_URL", "https in production"),
        ("FRONTEND_URL", "absolute http(s) URL"),
        ("STRIPE_SECRET_KEY", "sk_ or rk_"),
        ("STRIPE_WEBHOOK_SECRET", "whsec_"),
        ("STRIPE_EVENT_S3_BUCKET", "bucket name"),
        ("STRIPE_API_BASE", "https URL"),
        ("STRIPE_WEBHOOK_TOLERANCE_SECONDS", "1 to 3600"),
        ("STRIPE_EVENT_S3_PREFIX", "relative folder"),
        ("GOOGLE_CLIENT_ID", "required when GOOGLE_CLIENT_SECRET"),
        (
            "MICROSOFT_CLIENT_SECRET",
            "required when MICROSOFT_CLIENT_ID",
        ),
        ("ALVRYN_BIND", "address"),
    ] {
        assert!(has(&p, var, needle), "{var}: {p:?}");
    }
    assert_eq!(p.len(), 12, "{p:?}");
    assert_no_secret(&format!("{p:?}"), &env);
}

#[test]
fn several_webhook_secrets_a_tolerance_and_a_local_api_base_are_taken() {
    let mut env = production();
    env.insert(
        "STRIPE_WEBHOOK_SECRET",
        format!("{WHSEC}, whsec_theNextOneWhileRolling"),
    );
    env.insert("STRIPE_WEBHOOK_TOLERANCE_SECONDS", "600".to_owned());
    env.insert("STRIPE_API_BASE", "http://127.0.0.1:12111/".to_owned());
    let cfg = load(&env).unwrap();
    let stripe = cfg.stripe.as_ref().unwrap();
    assert_eq!(stripe.webhook_secrets.len(), 2);
    assert_eq!(stripe.webhook_tolerance.as_secs(), 600);
    assert_eq!(stripe.api_base, "http://127.0.0.1:12111");
    assert_eq!(stripe.event_prefix, "stripe/events/");
    // A list with one bad entry names its position, not its value.
    env.insert(
        "STRIPE_WEBHOOK_SECRET",
        format!("{WHSEC},not-a-secret-value"),
    );
    let p = problems_for(&env);
    assert!(has(&p, "STRIPE_WEBHOOK_SECRET", "entry 2"), "{p:?}");
    assert!(!format!("{p:?}").contains("not-a-secret-value"));
}

#[test]
fn partial_stripe_settings_in_development_are_an_error() {
    let env: HashMap<_, _> = [("STRIPE_SECRET_KEY", STRIPE_KEY.to_owned())]
        .into_iter()
        .collect();
    let p = problems_for(&env);
    assert!(
        has(&p, "STRIPE_WEBHOOK_SECRET", "once any STRIPE_"),
        "{p:?}"
    );
    assert!(has(&p, "STRIPE_PRICE_MAP", "once any STRIPE_"), "{p:?}");
}

#[test]
fn unknown_environment_names_are_rejected() {
    let env: HashMap<_, _> = [("ALVRYN_ENV", "prodution".to_owned())]
        .into_iter()
        .collect();
    assert!(has(
        &problems_for(&env),
        "ALVRYN_ENV",
        "production or development"
    ));
}

#[test]
fn command_line_overrides_win() {
    let env: HashMap<_, _> = [("ALVRYN_BIND", "127.0.0.1:1".to_owned())]
        .into_iter()
        .collect();
    let o = Overrides {
        bind: Some("127.0.0.1:9999".parse().unwrap()),
        data_dir: Some("/tmp/x".into()),
    };
    let cfg = Config::from_lookup(&|n| env.get(n).map(OsString::from), &o).unwrap();
    assert_eq!(cfg.bind.port(), 9999);
    assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
}

#[test]
fn raw_32_byte_keys_with_non_utf8_bytes_are_accepted() {
    use std::os::unix::ffi::OsStringExt;
    let raw: Vec<u8> = (0..32u8)
        .map(|b| b.wrapping_mul(37).wrapping_add(200))
        .collect();
    let mut env = production();
    env.remove("FIELD_ENCRYPTION_KEY");
    let cfg = Config::from_lookup(
        &|n| {
            if n == "FIELD_ENCRYPTION_KEY" {
                Some(OsString::from_vec(raw.clone()))
            } else {
                env.get(n).map(OsString::from)
            }
        },
        &Overrides::default(),
    )
    .unwrap();
    match cfg.field_keys {
        FieldKeys::Static { active, .. } => assert_eq!(active.expose(), &raw[..]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn previous_jwt_secrets_and_audience_are_read_and_checked() {
    let mut env = production();
    env.insert(
        "JWT_SECRET_PREVIOUS",
        "old-access-secret-long-enough-0123456789".to_owned(),
    );
    env.insert("JWT_AUDIENCE", "my-api".to_owned());
    let cfg = load(&env).unwrap();
    assert!(cfg.jwt_secret_previous.is_some() && cfg.jwt_refresh_secret_previous.is_none());
    assert_eq!(cfg.jwt_audience, "my-api");
    env.insert("JWT_REFRESH_SECRET_PREVIOUS", "too-short".to_owned());
    let p = problems_for(&env);
    assert!(
        has(&p, "JWT_REFRESH_SECRET_PREVIOUS", "9 bytes long"),
        "{p:?}"
    );
    assert_eq!(load(&HashMap::new()).unwrap().jwt_audience, "alvryn");
}

/// Development mode invents secrets per data folder: refused when the
/// instance shares a database or listens beyond loopback, naming every
/// secret to set, never echoing the database URI.
#[test]
fn development_with_generated_secrets_is_refused_when_shared() {
    let vars = |e: &ConfigError| e.problems.iter().map(|p| p.var).collect::<Vec<_>>();
    let mongo: HashMap<&'static str, String> = [(
        "MONGO_URI",
        "mongodb://user:mongopass@db.internal:27017/alvryn".to_owned(),
    )]
    .into_iter()
    .collect();
    let err = load(&mongo).unwrap_err();
    assert_eq!(
        vars(&err),
        ["JWT_SECRET", "JWT_REFRESH_SECRET", "FIELD_ENCRYPTION_KEY"]
    );
    let text = err.to_string();
    assert!(text.contains("MONGO_URI is set"), "{text}");
    assert_no_secret(&text, &mongo);

    // Only what would be generated is named.
    let mut partly = mongo.clone();
    partly.insert("JWT_SECRET", JWT.to_owned());
    partly.insert("FIELD_ENCRYPTION_KEY", KEY_B64.to_owned());
    assert_eq!(vars(&load(&partly).unwrap_err()), ["JWT_REFRESH_SECRET"]);

    // Listening beyond loopback is sharing too.
    let open: HashMap<&'static str, String> = [("ALVRYN_BIND", "0.0.0.0:8080".to_owned())]
        .into_iter()
        .collect();
    let err = load(&open).unwrap_err();
    assert_eq!(err.problems.len(), 3);
    assert!(err.to_string().contains("not loopback"), "{err}");
    let open_flag = Config::from_lookup(
        &|_| None,
        &Overrides {
            bind: Some("[::]:8080".parse().unwrap()),
            ..Overrides::default()
        },
    );
    assert!(open_flag.is_err(), "--bind counts as much as ALVRYN_BIND");

    // Every secret set: development on a shared database is fine.
    let mut full = mongo.clone();
    full.insert("JWT_SECRET", JWT.to_owned());
    full.insert("JWT_REFRESH_SECRET", JWT_REFRESH.to_owned());
    full.insert("FIELD_ENCRYPTION_KEY", KEY_B64.to_owned());
    assert!(load(&full).is_ok());
    // And a newcomer on loopback with nothing set still starts.
    assert!(load(&HashMap::new()).is_ok());
    let v6 = Config::from_lookup(
        &|_| None,
        &Overrides {
            bind: Some("[::1]:8080".parse().unwrap()),
            ..Overrides::default()
        },
    );
    assert!(v6.is_ok(), "IPv6 loopback is loopback");
}

/// The development configuration with `var` unset (`None`) or set.
fn load_with(var: &'static str, value: Option<&str>) -> Result<Config, ConfigError> {
    load(&value.map(|v| (var, v.to_owned())).into_iter().collect())
}

/// Each of `bad` set as `var` is a start-up problem naming `var`.
fn refused(var: &'static str, bad: &[&str]) {
    for bad in bad {
        let err = load_with(var, Some(bad)).unwrap_err();
        assert!(err.problems.iter().any(|p| p.var == var), "{bad:?}: {err}");
    }
}

#[test]
fn session_max_age_defaults_to_90_days_and_parses_durations() {
    const VAR: &str = "ALVRYN_SESSION_MAX_AGE";
    let with = |v| load_with(VAR, v).unwrap().session_max_age;
    let day = std::time::Duration::from_secs(86_400);
    assert_eq!(with(None), Some(90 * day));
    assert_eq!(with(Some("0")), None);
    assert_eq!(with(Some("86400")), Some(day));
    assert_eq!(with(Some("30d")), Some(30 * day));
    assert_eq!(with(Some(" 12h ")), Some(day / 2));
    refused(VAR, &["-1", "soon", "30", "20years", "90 parsecs"]);
}

#[test]
fn the_rate_limit_store_timeout_defaults_to_a_second_and_is_bounded() {
    const VAR: &str = "ALVRYN_RATE_LIMIT_STORE_TIMEOUT";
    let with = |v| load_with(VAR, v).unwrap().rate_limits.store_timeout();
    let ms = std::time::Duration::from_millis;
    assert_eq!(with(None), ms(1000));
    assert_eq!(with(Some("250ms")), ms(250));
    assert_eq!(with(Some(" 5 ")), ms(5000));
    assert_eq!(with(Some("29s")), ms(29_000));
    refused(VAR, &["0", "10ms", "31s", "1h", "-1", "soon"]);
    // Not as long as the request timeout (30 s by default, 5 s here):
    // the request would fail first instead of going through.
    refused(VAR, &["30s"]);
    let env: HashMap<&'static str, String> = [
        (VAR, "5s".to_owned()),
        ("ALVRYN_REQUEST_TIMEOUT_SECONDS", "5".to_owned()),
    ]
    .into();
    let err = load(&env).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.var == VAR && p.message.contains("ALVRYN_REQUEST_TIMEOUT_SECONDS")),
        "{err}"
    );
    assert_eq!(load_with(VAR, Some("2s")).unwrap().describe()[VAR], "2s");
    // Unset with a 1 s request timeout: half of it.
    let cfg = load_with("ALVRYN_REQUEST_TIMEOUT_SECONDS", Some("1")).unwrap();
    assert_eq!(cfg.rate_limits.store_timeout(), ms(500));
}

#[test]
fn cors_origins_are_normalised_and_the_frontend_comes_first() {
    let mut env = production();
    env.insert(
        "CORS_ORIGINS",
        " https://Admin.Example.com , https://partner.example.net:8443/,https://app.example.com:443,,"
            .to_owned(),
    );
    let cfg = load(&env).unwrap();
    assert_eq!(
        cfg.cors_origins,
        [
            "https://admin.example.com",
            "https://partner.example.net:8443",
            "https://app.example.com"
        ]
    );
    // FRONTEND_URL (https://app.example.com) is allowed once, first.
    assert_eq!(
        cfg.allowed_origins(),
        [
            "https://app.example.com",
            "https://admin.example.com",
            "https://partner.example.net:8443"
        ]
    );
    assert!(
        cfg.describe()["CORS_ORIGINS"].contains("https://partner.example.net:8443"),
        "{:?}",
        cfg.describe()
    );
    // Unset: the frontend alone.
    let cfg = load(&production()).unwrap();
    assert!(cfg.cors_origins.is_empty());
    assert_eq!(cfg.allowed_origins(), ["https://app.example.com"]);
    // A frontend URL with a path allows its origin.
    let mut env = production();
    env.insert("FRONTEND_URL", "https://app.example.com/web/".to_owned());
    assert_eq!(
        load(&env).unwrap().allowed_origins(),
        ["https://app.example.com"]
    );
}

#[test]
fn bad_cors_origins_are_each_reported_by_position_with_the_rest() {
    let mut env = production();
    env.insert(
        "CORS_ORIGINS",
        [
            "https://ok.example.com",     // 1: fine
            "*",                          // 2: wildcard
            "https://app.example.com/x",  // 3: path
            "ftp://files.example.com",    // 4: scheme
            "https://u:pw@example.com",   // 5: credentials
            "http://plain.example.com",   // 6: http in production
            "https://*.example.com",      // 7: wildcard host
            "https://q.example.com/?a=b", // 8: query
            "null",                       // 9: the opaque origin
            "app.example.com",            // 10: no scheme
        ]
        .join(","),
    );
    env.insert("JWT_SECRET", "short".to_owned());
    let p = problems_for(&env);
    for (n, needle) in [
        (2, "not an origin"),
        (3, "no path"),
        (4, "not an origin"),
        (5, "credentials"),
        (6, "https in production"),
        (7, "no wildcards"),
        (8, "no path, query"),
        (9, "not an origin"),
        (10, "not an origin"),
    ] {
        assert!(
            has(&p, "CORS_ORIGINS", &format!("entry {n} ")),
            "entry {n} not reported: {p:?}"
        );
        assert!(
            p.iter().any(|x| x.var == "CORS_ORIGINS"
                && x.message.starts_with(&format!("entry {n} "))
                && x.message.contains(needle)),
            "entry {n} should say {needle:?}: {p:?}"
        );
    }
    assert!(!has(&p, "CORS_ORIGINS", "entry 1 "), "{p:?}");
    // Reported together with every other problem, never echoing a value.
    assert!(has(&p, "JWT_SECRET", "5 bytes"), "{p:?}");
    let text = ConfigError { problems: p }.to_string();
    assert!(!text.contains("pw@") && !text.contains("partner"), "{text}");
    // Development accepts an http origin (a local frontend).
    let env: HashMap<_, _> = [("CORS_ORIGINS", "http://localhost:5173".to_owned())]
        .into_iter()
        .collect();
    let cfg = load(&env).unwrap();
    assert_eq!(
        cfg.allowed_origins(),
        ["http://localhost:3000", "http://localhost:5173"]
    );
}

#[test]
fn the_log_format_defaults_by_mode_and_refuses_anything_else() {
    assert_eq!(load(&HashMap::new()).unwrap().log_format, LogFormat::Text);
    assert_eq!(load(&production()).unwrap().log_format, LogFormat::Json);
    let mut env = production();
    env.insert("ALVRYN_LOG_FORMAT", "text".to_owned());
    assert_eq!(load(&env).unwrap().log_format, LogFormat::Text);
    let env: HashMap<_, _> = [("ALVRYN_LOG_FORMAT", " JSON ".to_owned())]
        .into_iter()
        .collect();
    assert_eq!(load(&env).unwrap().log_format, LogFormat::Json);
    let mut env = production();
    env.insert("ALVRYN_LOG_FORMAT", "xml".to_owned());
    assert!(has(
        &problems_for(&env),
        "ALVRYN_LOG_FORMAT",
        "json or text"
    ));
    // What the logger reads before the configuration: the same rule, an
    // invalid value falling back to the mode's default.
    let lookup = |env: HashMap<&'static str, String>| {
        LogFormat::from_lookup(&|name| env.get(name).map(OsString::from))
    };
    assert_eq!(lookup(production()), LogFormat::Json);
    assert_eq!(lookup(HashMap::new()), LogFormat::Text);
    assert_eq!(lookup(env), LogFormat::Json);
}

#[test]
fn rate_limits_default_to_the_documented_values() {
    use crate::ratelimit::Group;
    let cfg = load(&HashMap::new()).unwrap();
    let limit = |g| cfg.rate_limits.limit(g).map(|l| l.to_string());
    assert_eq!(limit(Group::Signup).as_deref(), Some("30 per 1h"));
    assert_eq!(limit(Group::Login).as_deref(), Some("30 per 5m"));
    assert_eq!(limit(Group::LoginAccount).as_deref(), Some("10 per 5m"));
    assert_eq!(limit(Group::Refresh).as_deref(), Some("150 per 5m"));
    assert_eq!(limit(Group::OAuth).as_deref(), Some("90 per 5m"));
    assert_eq!(limit(Group::Billing).as_deref(), Some("100 per 5m"));
    assert_eq!(limit(Group::Webhook), None);
    assert!(cfg.rate_limits.trusted_proxies.is_empty());
    let described = cfg.describe();
    assert_eq!(described["ALVRYN_RATE_LIMIT_LOGIN"], "30 per 5m");
    assert_eq!(described["ALVRYN_RATE_LIMIT_WEBHOOK"], "off");
    assert!(described["ALVRYN_TRUSTED_PROXIES"].contains("ignored"));
}

#[test]
fn rate_limits_and_trusted_proxies_are_read() {
    use crate::ratelimit::Group;
    let mut env = production();
    env.insert(
        "ALVRYN_TRUSTED_PROXIES",
        "10.0.0.0/8, 127.0.0.1,fd00::/8".into(),
    );
    env.insert("ALVRYN_RATE_LIMIT_LOGIN", "5/90s".into());
    env.insert("ALVRYN_RATE_LIMIT_REFRESH", "off".into());
    env.insert("ALVRYN_RATE_LIMIT_WEBHOOK", "1000/1m".into());
    let cfg = load(&env).unwrap();
    let r = &cfg.rate_limits;
    assert_eq!(r.trusted_proxies.ranges().len(), 3);
    assert!(r.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
    let login = r.limit(Group::Login).unwrap();
    assert_eq!(
        (login.requests, login.window),
        (5, std::time::Duration::from_secs(90))
    );
    assert_eq!(r.limit(Group::Refresh), None);
    assert_eq!(r.limit(Group::Webhook).unwrap().requests, 1000);
    // Unset groups keep their defaults.
    assert_eq!(r.limit(Group::Signup), Group::Signup.default_limit());
    let described = cfg.describe();
    assert_eq!(
        described["ALVRYN_TRUSTED_PROXIES"],
        "10.0.0.0/8,127.0.0.1/32,fd00::/8"
    );
    assert_eq!(described["ALVRYN_RATE_LIMIT_REFRESH"], "off");
    assert_eq!(described["ALVRYN_RATE_LIMIT_LOGIN"], "5 per 1m 30s");
}

#[test]
fn bad_rate_limits_and_proxies_are_reported_together() {
    let mut env = production();
    env.insert(
        "ALVRYN_TRUSTED_PROXIES",
        "10.0.0.1/8,not-a-range,0.0.0.0/0".into(),
    );
    env.insert("ALVRYN_RATE_LIMIT_LOGIN", "thirty per minute".into());
    env.insert("ALVRYN_RATE_LIMIT_SIGNUP", "0/1h".into());
    env.insert("ALVRYN_RATE_LIMIT_LOGIN_ACCOUNT", "10/2d".into());
    env.insert("ALVRYN_RATE_LIMIT_OAUTH", "10".into());
    env.insert("JWT_AUDIENCE", "\u{7}".into());
    let p = problems_for(&env);
    assert!(has(&p, "ALVRYN_TRUSTED_PROXIES", "host bits"), "{p:?}");
    assert!(has(&p, "ALVRYN_TRUSTED_PROXIES", "entry 2"), "{p:?}");
    assert!(has(&p, "ALVRYN_TRUSTED_PROXIES", "every address"), "{p:?}");
    for var in [
        "ALVRYN_RATE_LIMIT_LOGIN",
        "ALVRYN_RATE_LIMIT_SIGNUP",
        "ALVRYN_RATE_LIMIT_LOGIN_ACCOUNT",
        "ALVRYN_RATE_LIMIT_OAUTH",
    ] {
        assert!(has(&p, var, "REQUESTS/WINDOW like 30/5m"), "{var}: {p:?}");
    }
    // Reported with the other problems, never echoing what was given.
    assert!(has(&p, "JWT_AUDIENCE", "printable"), "{p:?}");
    assert_eq!(p.len(), 8, "{p:?}");
    let text = ConfigError { problems: p }.to_string();
    assert!(
        !text.contains("not-a-range") && !text.contains("thirty"),
        "{text}"
    );
}

#[test]
fn worker_settings_default_parse_and_report_every_problem_together() {
    let defaults = load(&HashMap::new()).unwrap().worker;
    assert_eq!(defaults, WorkerSettings::default());
    assert_eq!(defaults.metrics_bind.to_string(), "127.0.0.1:9091");
    assert_eq!(defaults.lease_ttl, std::time::Duration::from_secs(60));
    assert_eq!(defaults.archive_batch, 100);
    assert_eq!(defaults.upload_pause, std::time::Duration::ZERO);

    let env: HashMap<&'static str, String> = [
        ("ALVRYN_WORKER_METRICS_BIND", " 127.0.0.1:0 "),
        ("ALVRYN_WORKER_LEASE_TTL_SECONDS", "2"),
        ("ALVRYN_WORKER_ARCHIVE_BATCH", "1"),
        ("ALVRYN_WORKER_UPLOAD_PAUSE_MS", "250"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect();
    let w = load(&env).unwrap().worker;
    assert_eq!(w.metrics_bind.port(), 0);
    assert_eq!(w.lease_ttl, std::time::Duration::from_secs(2));
    assert_eq!(w.archive_batch, 1);
    assert_eq!(w.upload_pause, std::time::Duration::from_millis(250));

    // Out of range or malformed: each named, all at once, with the range.
    let bad: HashMap<&'static str, String> = [
        ("ALVRYN_WORKER_METRICS_BIND", "localhost"),
        ("ALVRYN_WORKER_LEASE_TTL_SECONDS", "0"),
        ("ALVRYN_WORKER_ARCHIVE_BATCH", "10001"),
        ("ALVRYN_WORKER_UPLOAD_PAUSE_MS", "-5"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect();
    let err = load(&bad).unwrap_err();
    let vars: Vec<&str> = err.problems.iter().map(|p| p.var).collect();
    assert_eq!(
        vars,
        [
            "ALVRYN_WORKER_METRICS_BIND",
            "ALVRYN_WORKER_LEASE_TTL_SECONDS",
            "ALVRYN_WORKER_ARCHIVE_BATCH",
            "ALVRYN_WORKER_UPLOAD_PAUSE_MS",
        ]
    );
    let text = err.to_string();
    assert!(text.contains("from 1 to 3600"), "{text}");
    assert!(text.contains("from 1 to 10000"), "{text}");
    assert!(text.contains("from 0 to 60000"), "{text}");
    assert!(
        !text.contains("localhost"),
        "the value is not echoed: {text}"
    );
}

#[test]
fn a_metrics_token_must_be_long_and_is_never_echoed() {
    let env: HashMap<_, _> = [("ALVRYN_METRICS_TOKEN", "short-tok".to_owned())]
        .into_iter()
        .collect();
    let p = problems_for(&env);
    assert!(has(&p, "ALVRYN_METRICS_TOKEN", "at least 16"), "{p:?}");
    assert!(!format!("{p:?}").contains("short-tok"));
    let env: HashMap<_, _> = [(
        "ALVRYN_METRICS_TOKEN",
        "a-long-enough-metrics-token".to_owned(),
    )]
    .into_iter()
    .collect();
    let cfg = load(&env).unwrap();
    assert!(cfg.metrics_token.is_some());
    assert!(!format!("{:?}", cfg.describe()).contains("a-long-enough"));
}
