//! The deploy files, checked without Docker or systemd running (neither
//! can run on these machines): the Dockerfile, docker-compose.yml and
//! .env.example read and checked for what a deploy depends on (a non-root
//! final stage, one image for both roles, health checks that are real
//! commands, no secret baked in), the systemd units for their hardening
//! (and by `systemd-analyze verify` where systemd is installed), the CI
//! workflow for its MongoDB service and the large-file rule; hadolint and
//! actionlint (installed by scripts/test) on the Dockerfile and workflow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Server, alvryn, run};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A name that would hold a secret.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "SECRET",
        "PASSWORD",
        "TOKEN",
        "KEY",
        "MONGO_URI",
        "CREDENTIAL",
    ]
    .iter()
    .any(|w| n.contains(w))
}

// ------------------------------------------------------------ Dockerfile

/// One instruction: its keyword (upper case) and the rest of the line,
/// continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// The Dockerfile's stages, each a list of instructions (the first a
/// `FROM`), and the `ARG`s before the first `FROM`.
fn dockerfile() -> (Vec<Instruction>, Vec<Vec<Instruction>>) {
    let text = read("Dockerfile");
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        // Comment lines inside a continued instruction are dropped too.
        if trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside a continued line"
    );
    let mut global = Vec::new();
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for l in logical {
        let (keyword, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let ins = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        };
        if ins.keyword == "FROM" {
            stages.push(vec![ins]);
        } else if let Some(stage) = stages.last_mut() {
            stage.push(ins);
        } else {
            global.push(ins);
        }
    }
    (global, stages)
}

fn find<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a Instruction> {
    stage.iter().filter(|i| i.keyword == keyword).collect()
}

/// An exec-form (JSON array) argument list.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|_| panic!("not exec form (a JSON array): {args}"))
}

fn workspace_rust_version() -> String {
    read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .to_owned()
}

#[test]
fn the_image_is_built_with_the_pinned_toolchain_and_runs_as_a_non_root_user() {
    let (global, stages) = dockerfile();
    assert!(stages.len() >= 2, "a multi-stage build");

    // The builder: the workspace's toolchain, a locked release build.
    let rust = global
        .iter()
        .find(|i| i.keyword == "ARG" && i.args.starts_with("RUST_VERSION="))
        .expect("ARG RUST_VERSION before the first FROM");
    let version = rust.args.trim_start_matches("RUST_VERSION=");
    assert!(
        version == workspace_rust_version()
            || version.starts_with(&format!("{}.", workspace_rust_version())),
        "the image's Rust {version} is not the workspace's {}",
        workspace_rust_version()
    );
    let builder = &stages[0];
    assert!(
        builder[0].args.starts_with("rust:${RUST_VERSION}")
            && builder[0].args.ends_with(" AS builder"),
        "{:?}",
        builder[0]
    );
    assert!(
        find(builder, "RUN").iter().any(|r| r
            .args
            .contains("cargo build --release --locked --bin alvryn")),
        "the builder must build the alvryn binary, locked, in release"
    );

    // The final stage: a non-root user, the binary as entry point, the
    // server as default command, a health check.
    let last = stages.last().unwrap();
    assert!(
        find(last, "COPY")
            .iter()
            .any(|c| c.args.starts_with("--from=builder")
                && c.args.ends_with("/usr/local/bin/alvryn")),
        "the runtime gets the builder's binary"
    );
    let users = find(last, "USER");
    let user = users.last().expect("USER in the final stage");
    let name = user.args.split(':').next().unwrap();
    assert!(
        name != "root" && name != "0" && !name.is_empty(),
        "the final stage runs as {name}"
    );
    assert!(
        name.parse::<u32>().is_ok_and(|uid| uid >= 1000),
        "a numeric non-root uid (so Kubernetes' runAsNonRoot can check it): {name}"
    );
    let entrypoint = find(last, "ENTRYPOINT");
    assert_eq!(exec_form(&entrypoint.last().unwrap().args), ["alvryn"]);
    let cmd = find(last, "CMD");
    assert_eq!(
        exec_form(&cmd.last().unwrap().args),
        ["serve", "--bind", "0.0.0.0:8080"]
    );
    let health = find(last, "HEALTHCHECK");
    let health = health.last().expect("HEALTHCHECK in the final stage");
    assert!(health.args.contains(" CMD ["), "{health:?}");
}

#[test]
fn the_image_bakes_in_no_secret_and_its_context_leaves_local_files_out() {
    let (global, stages) = dockerfile();
    for ins in global.iter().chain(stages.iter().flatten()) {
        if matches!(ins.keyword.as_str(), "ENV" | "ARG" | "LABEL") {
            // ENV A=1 B=2 (or the old ENV A 1): every name set.
            let names: Vec<&str> = if ins.args.contains('=') {
                ins.args
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                    .collect()
            } else {
                ins.args.split_whitespace().take(1).collect()
            };
            for name in names {
                assert!(
                    !secret_name(name),
                    "{} {name} would bake a secret into the image",
                    ins.keyword
                );
            }
        }
        if ins.keyword == "COPY" || ins.keyword == "ADD" {
            assert!(!ins.args.contains(".env"), "{ins:?}");
        }
    }
    let (_, stages) = dockerfile();
    let env: Vec<&Instruction> = find(stages.last().unwrap(), "ENV");
    assert!(
        env.iter().any(|e| e.args.contains("ALVRYN_ENV=production")),
        "an unconfigured container must refuse to start, not generate secrets"
    );

    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for must in [
        ".git",
        "target",
        ".test-env",
        "alvryn-data",
        ".env",
        "**/*.db",
    ] {
        assert!(
            ignored.iter().any(|l| l == must),
            ".dockerignore lacks {must}"
        );
    }
    assert!(
        read(".gitignore").lines().any(|l| l.trim() == "/.env"),
        "a filled-in .env must stay out of git"
    );
}

/// The health check's command, run for real: `alvryn <args>` with the
/// in-container URL pointed at `url`.
fn health_check(args: &[String], url: &str) -> support::Output {
    assert_eq!(args[0], "/usr/local/bin/alvryn", "{args:?}");
    let mut c = alvryn();
    for a in &args[1..] {
        c.arg(a.replace("http://127.0.0.1:8080", url));
    }
    run(c)
}

#[test]
fn the_health_checks_are_real_commands_that_pass_on_a_live_server_and_fail_on_a_dead_one() {
    let (_, stages) = dockerfile();
    let health = find(stages.last().unwrap(), "HEALTHCHECK")
        .last()
        .unwrap()
        .args
        .clone();
    let image_check = exec_form(health.split_once(" CMD ").unwrap().1);
    let compose = compose();
    let server = service(&compose, "server");
    let test = &server["healthcheck"]["test"];
    let compose_check: Vec<String> = test
        .as_vec()
        .unwrap()
        .iter()
        .map(|y| y.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(compose_check[0], "CMD");

    let dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.env("ALVRYN_DATA_DIR", dir.path());
    let live = Server::start(c);
    let live_url = format!("http://{}", live.addr);
    let dead_url = format!("http://127.0.0.1:{}", support::free_port());
    for check in [&image_check[..], &compose_check[1..]] {
        let ok = health_check(check, &live_url);
        assert_eq!(ok.code, 0, "{check:?}: {}{}", ok.stdout, ok.stderr);
        assert!(ok.stdout.contains("PASS health"), "{}", ok.stdout);
        let down = health_check(check, &dead_url);
        assert_eq!(down.code, 1, "{check:?}: {}", down.stdout);
    }
}

#[test]
fn hadolint_accepts_the_dockerfile_and_refuses_a_careless_one() {
    let Some(hadolint) = support::service("ALVRYN_TEST_HADOLINT") else {
        return;
    };
    let ours = Command::new(&hadolint)
        .args(["--no-color", "Dockerfile"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        ours.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&ours.stderr)
    );
    // The linter really lints: an unpinned base, root, apt without cleanup.
    let dir = tempfile::tempdir().unwrap();
    let careless = dir.path().join("Dockerfile");
    std::fs::write(
        &careless,
        "FROM debian:latest\nRUN apt-get update && apt-get install curl\nCMD curl example.com\n",
    )
    .unwrap();
    let theirs = Command::new(&hadolint)
        .args(["--no-color"])
        .arg(&careless)
        .output()
        .unwrap();
    assert!(!theirs.status.success());
    let said = String::from_utf8_lossy(&theirs.stdout);
    assert!(said.contains("DL3007") && said.contains("DL3008"), "{said}");
}

// ------------------------------------------------------------ compose

fn compose() -> Yaml {
    let docs = YamlLoader::load_from_str(&read("docker-compose.yml")).unwrap();
    docs.into_iter().next().unwrap()
}

/// A service with YAML merge keys (`<<: *anchor`) applied, as Compose
/// applies them: the service's own keys win.
fn service(compose: &Yaml, name: &str) -> Yaml {
    let Yaml::Hash(own) = &compose["services"][name] else {
        panic!("no service {name}");
    };
    let mut merged = match own.get(&Yaml::String("<<".into())) {
        Some(Yaml::Hash(base)) => base.clone(),
        Some(other) => panic!("unexpected merge value {other:?}"),
        None => Default::default(),
    };
    for (k, v) in own {
        if k.as_str() != Some("<<") {
            merged.insert(k.clone(), v.clone());
        }
    }
    Yaml::Hash(merged)
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("not a list: {y:?}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("{other:?}"),
                };
                (k.as_str().unwrap().to_owned(), v)
            })
            .collect(),
        Yaml::BadValue => BTreeMap::new(),
        other => panic!("environment as a map, not {other:?}"),
    }
}

#[test]
fn compose_runs_the_server_and_the_worker_from_one_image_beside_mongodb_and_s3() {
    let compose = compose();
    let (server, worker) = (service(&compose, "server"), service(&compose, "worker"));
    assert_eq!(server["image"], worker["image"], "one image, two roles");
    assert!(server["image"].as_str().is_some());
    assert_eq!(
        strings(&server["command"]),
        ["serve", "--bind", "0.0.0.0:8080"]
    );
    assert_eq!(strings(&worker["command"]), ["worker"]);
    for (name, s) in [("server", &server), ("worker", &worker)] {
        assert_eq!(s["env_file"].as_str(), Some(".env"), "{name}");
        assert_eq!(
            environment(s),
            environment(&server),
            "{name}: the same settings"
        );
        assert_eq!(s["read_only"].as_bool(), Some(true), "{name}");
        assert_eq!(strings(&s["cap_drop"]), ["ALL"], "{name}");
        assert!(
            strings(&s["security_opt"]).contains(&"no-new-privileges:true".to_owned()),
            "{name}"
        );
        assert_eq!(
            s["depends_on"]["mongo"]["condition"].as_str(),
            Some("service_healthy"),
            "{name} starts after MongoDB is healthy"
        );
    }
    // Health checks: the server's own; the worker serves no HTTP and
    // turns off the image's; MongoDB and the S3 stand-in have theirs.
    assert!(server["healthcheck"]["test"].as_vec().is_some());
    assert_eq!(worker["healthcheck"]["disable"].as_bool(), Some(true));
    for dep in ["mongo", "s3"] {
        let s = service(&compose, dep);
        assert!(
            s["healthcheck"]["test"].as_vec().is_some(),
            "{dep} has no health check"
        );
    }
    assert!(
        service(&compose, "mongo")["image"]
            .as_str()
            .unwrap()
            .starts_with("mongo:7")
    );
    // Published on loopback only: a proxy in front terminates TLS.
    for p in strings(&server["ports"]) {
        assert!(p.starts_with("127.0.0.1:"), "{p}");
    }
    // MONGO_URI points at the mongo service, its password from .env.
    let uri = &environment(&server)["MONGO_URI"];
    assert!(uri.starts_with("mongodb://${MONGO_USER"), "{uri}");
    assert!(
        uri.contains(":${MONGO_PASSWORD") && uri.contains("}@mongo:27017/"),
        "{uri}"
    );
}

#[test]
fn compose_and_env_example_hold_no_secret_and_name_only_real_settings() {
    let text = read("docker-compose.yml");
    let compose = compose();
    let Yaml::Hash(services) = &compose["services"] else {
        panic!()
    };
    for name in services.keys() {
        let s = service(&compose, name.as_str().unwrap());
        for (k, v) in environment(&s) {
            if secret_name(&k) && k != "MONGO_URI" {
                assert!(
                    v.starts_with("${") && v.ends_with('}') && v.matches("${").count() == 1,
                    "{k} in service {name:?} must come from .env, not be written here"
                );
            }
        }
    }
    // Every variable the compose file interpolates is in .env.example.
    let example = read(".env.example");
    let documented: BTreeMap<String, String> = example
        .lines()
        .map(|l| l.trim().trim_start_matches("# ").trim())
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let uncommented: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for part in uncommented.split("${").skip(1) {
        let var: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            documented.contains_key(&var),
            "docker-compose.yml uses ${{{var}}}, which .env.example does not name"
        );
    }
    // Every setting .env.example names is one the server reads (a typo
    // would be silently ignored), and no secret has a value.
    // (ALVRYN_LOG is read where logging starts, in cli.rs.)
    let config = read("alvryn-server/src/config/mod.rs") + &read("alvryn-server/src/cli.rs");
    let compose_only = ["MONGO_USER", "MONGO_PASSWORD"];
    for (k, v) in &documented {
        let read_by_server = config.contains(&format!("\"{k}\""));
        let aws = k.starts_with("AWS_");
        assert!(
            read_by_server || aws || compose_only.contains(&k.as_str()),
            ".env.example names {k}, which nothing reads"
        );
        if secret_name(k) && k != "MONGO_URI" && !k.ends_with("_KEY_ID") {
            assert!(v.is_empty(), ".env.example gives {k} a value");
        }
    }
    assert_eq!(documented["ALVRYN_ENV"], "production");
}

// ------------------------------------------------------------ systemd

/// A unit file as (section, key) -> values (a key may repeat).
fn unit(path: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in read(path).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{path}: not key=value: {line}"));
        out.entry((section.clone(), k.trim().to_owned()))
            .or_default()
            .push(v.trim().to_owned());
    }
    out
}

fn one(u: &BTreeMap<(String, String), Vec<String>>, key: &str) -> String {
    u.get(&("Service".to_owned(), key.to_owned()))
        .and_then(|v| v.last().cloned())
        .unwrap_or_else(|| panic!("no {key}= in [Service]"))
}

const UNITS: [&str; 2] = [
    "deploy/systemd/alvryn.service",
    "deploy/systemd/alvryn-worker.service",
];

#[test]
fn the_systemd_units_are_hardened_and_share_one_user_and_data_folder() {
    let server = unit(UNITS[0]);
    let worker = unit(UNITS[1]);
    assert!(one(&server, "ExecStart").starts_with("/usr/local/bin/alvryn serve "));
    assert_eq!(one(&worker, "ExecStart"), "/usr/local/bin/alvryn worker");
    for (path, u) in [(UNITS[0], &server), (UNITS[1], &worker)] {
        for (key, want) in [
            ("Restart", "on-failure"),
            ("EnvironmentFile", "/etc/alvryn/alvryn.env"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("DynamicUser", "yes"),
            ("CapabilityBoundingSet", ""),
            ("AmbientCapabilities", ""),
            ("RestrictSUIDSGID", "yes"),
            ("UMask", "0077"),
        ] {
            assert_eq!(one(u, key), want, "{path}: {key}");
        }
        assert!(
            one(u, "ReadWritePaths")
                .split_whitespace()
                .any(|p| p == "/var/lib/alvryn"),
            "{path}"
        );
        assert_eq!(
            one(u, "Environment"),
            "ALVRYN_DATA_DIR=/var/lib/alvryn",
            "{path}"
        );
        assert_eq!(
            u.get(&("Install".into(), "WantedBy".into()))
                .map(|v| v[0].as_str()),
            Some("multi-user.target"),
            "{path}"
        );
    }
    // The worker shares the server's embedded store (and its lock file):
    // the same dynamic user, the same state folder.
    for key in ["User", "Group", "StateDirectory"] {
        assert_eq!(one(&server, key), one(&worker, key), "{key}");
    }
}

#[test]
fn systemd_analyze_verifies_the_units_without_a_warning() {
    let Ok(analyze) = std::env::var("ALVRYN_TEST_SYSTEMD_ANALYZE") else {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (scripts/test sets ALVRYN_TEST_SYSTEMD_ANALYZE when it is)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = support::alvryn_bin();
    for path in UNITS {
        // The binary where the unit expects it is not installed here: the
        // same unit pointing at the test build.
        let name = Path::new(path).file_name().unwrap();
        let copy = dir.path().join(name);
        std::fs::write(
            &copy,
            read(path).replace("/usr/local/bin/alvryn", bin.to_str().unwrap()),
        )
        .unwrap();
        let out = Command::new(&analyze)
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{path}: {said}");
        // Unknown keys and bad values are only warnings: none allowed.
        assert!(said.trim().is_empty(), "{path}: {said}");
    }
    // It does report what is wrong.
    let bad = dir.path().join("bad.service");
    std::fs::write(
        &bad,
        "[Service]\nExecStart=/bin/true\nProtectSystem=sometimes\nNoNewPrivilege=yes\n",
    )
    .unwrap();
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&bad)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("ProtectSystem") || said.contains("protect system"),
        "{said}"
    );
    assert!(said.contains("NoNewPrivilege"), "{said}");
}

// ------------------------------------------------------------ CI

fn workflow() -> Yaml {
    YamlLoader::load_from_str(&read(".github/workflows/ci.yml"))
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
}

#[test]
fn the_ci_workflow_runs_the_test_command_beside_a_real_mongodb() {
    let wf = workflow();
    let Yaml::Hash(jobs) = &wf["jobs"] else {
        panic!("no jobs")
    };
    let job = jobs
        .values()
        .find(|j| {
            j["steps"]
                .as_vec()
                .is_some_and(|s| s.iter().any(|s| s["run"].as_str() == Some("scripts/test")))
        })
        .expect("a job that runs scripts/test");
    let Yaml::Hash(services) = &job["services"] else {
        panic!("the test job has no services")
    };
    let mongo = services
        .values()
        .find(|s| s["image"].as_str().is_some_and(|i| i.starts_with("mongo:")))
        .expect("a MongoDB service container");
    assert!(
        strings(&mongo["ports"])
            .iter()
            .any(|p| p.ends_with(":27017"))
    );
    assert!(mongo["options"].as_str().unwrap().contains("--health-cmd"));
    let uri = job["env"]["ALVRYN_TEST_MONGODB_URI"]
        .as_str()
        .expect("ALVRYN_TEST_MONGODB_URI in the job's environment");
    assert!(
        uri == "mongodb://127.0.0.1:27017" || uri == "mongodb://localhost:27017",
        "{uri}"
    );
    let steps = job["steps"].as_vec().unwrap();
    let position = |command: &str| {
        steps
            .iter()
            .position(|s| s["run"].as_str().is_some_and(|r| r.contains(command)))
    };
    let large = position("scripts/check-large-files").expect("the large-file check");
    let tests = position("scripts/test").unwrap();
    assert!(
        large < tests,
        "large files are refused before the long build"
    );
    assert!(
        position("rust-version").is_some(),
        "the toolchain comes from the workspace's rust-version"
    );
}

#[test]
fn actionlint_accepts_the_workflow_and_refuses_a_broken_one() {
    let Some(actionlint) = support::service("ALVRYN_TEST_ACTIONLINT") else {
        return;
    };
    let ours = Command::new(&actionlint)
        .args(["-no-color", ".github/workflows/ci.yml"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        ours.status.success(),
        "actionlint:\n{}{}",
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&ours.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yml");
    std::fs::write(
        &broken,
        "on: push\njobs:\n  t:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.nope }}\n",
    )
    .unwrap();
    let theirs = Command::new(&actionlint)
        .arg("-no-color")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!theirs.status.success());
}

#[test]
fn the_large_file_check_refuses_a_tracked_file_over_50_mib() {
    const LIMIT: u64 = 50 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "--quiet"]);
    let sized = |name: &str, len: u64| {
        let f = std::fs::File::create(dir.path().join(name)).unwrap();
        f.set_len(len).unwrap();
    };
    sized("exactly-50-mib.bin", LIMIT);
    sized("small.txt", 10);
    git(&["add", "."]);
    let check = || {
        let mut c = Command::new(repo().join("scripts/check-large-files"));
        c.current_dir(dir.path());
        run(c)
    };
    let ok = check();
    assert_eq!(ok.code, 0, "{}", ok.stderr);

    sized("one byte over.bin", LIMIT + 1);
    git(&["add", "."]);
    let refused = check();
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused
            .stderr
            .contains("too large: one byte over.bin (52428801 bytes"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains("exactly-50-mib"),
        "{}",
        refused.stderr
    );

    // An untracked large file is not the repository's business.
    git(&["rm", "--cached", "--quiet", "one byte over.bin"]);
    assert_eq!(check().code, 0);
}
