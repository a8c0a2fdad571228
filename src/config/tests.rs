use super::*;
use crate::upstream::KeyMaterial;
use crate::upstream::config::testing::{GOOD, env};

#[test]
fn good_config_resolves_env_and_durations() {
    let c = Config::parse(GOOD, "shim.toml", &env).unwrap();
    let u = &c.upstreams["jobs"];
    assert_eq!(u.headers["authorization"], "Bearer t0k");
    assert_eq!(u.poll.max, Duration::from_secs(30));
    assert_eq!(
        c.callbacks.retry_schedule,
        vec![Duration::from_secs(5), Duration::from_secs(300)]
    );
    assert_eq!(c.server.max_body, 1 << 20);
    let keys = &u.webhook.as_ref().unwrap().keys;
    assert_eq!(keys.len(), 1);
    assert!(matches!(&keys[0].material, KeyMaterial::Hmac(s) if s.0.len() == 24));
}

fn err_of(text: &str) -> String {
    Config::parse(text, "shim.toml", &env)
        .unwrap_err()
        .to_string()
}

#[test]
fn unknown_key_names_file_and_key() {
    let e = err_of("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
    assert!(e.starts_with("shim.toml: "), "{e}");
    assert!(e.contains("unknown field `lisen`"), "{e}");
    assert!(e.contains("`server.lisen`"), "{e}");
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn bad_duration_is_explained() {
    let e = err_of(&GOOD.replace("max = \"30s\"", "max = \"30 parsecs\""));
    assert!(e.contains("invalid duration \"30 parsecs\""), "{e}");
    assert!(e.contains("`upstreams.jobs.poll.max`"), "{e}");
}

#[test]
fn callback_host_must_be_allowed() {
    let e = err_of(&GOOD.replace("http://127.0.0.1:9000/callback", "http://example.com/cb"));
    assert!(
        e.contains(
            "`callbacks.default_url`: host \"example.com\" is not in callbacks.allowed_hosts"
        ),
        "{e}"
    );
}

#[test]
fn callback_networks_ports_and_host_patterns_are_read_and_checked() {
    let with = |extra: &str| GOOD.replace("[callbacks]\n", &format!("[callbacks]\n{extra}\n"));
    let c = Config::parse(
        &with(
            "allowed_hosts = [\"127.0.0.1\", \"*.example.com\", \"*\"]\n\
             allowed_networks = [\"127.0.0.0/8\", \"10.1.0.0/16\", \"fd00::/8\"]\n\
             allowed_ports = [443, \"8000-8999\"]",
        ),
        "shim.toml",
        &env,
    );
    // The default_url's port 9000 is not in allowed_ports.
    let e = c.unwrap_err().to_string();
    assert!(e.contains("`callbacks.default_url`: port 9000"), "{e}");
    let c = Config::parse(
        &with(
            "allowed_networks = [\"127.0.0.0/8\", \"10.1.0.0/16\"]\n\
             allowed_ports = [443, \"8000-9000\"]",
        ),
        "shim.toml",
        &env,
    )
    .unwrap();
    assert_eq!(c.callbacks.allowed_networks.len(), 2);
    assert_eq!(
        c.callbacks.allowed_ports,
        Some(vec![443..=443, 8000..=9000])
    );
    let view = c.redacted();
    assert_eq!(
        view["callbacks"]["allowed_ports"],
        serde_json::json!(["443", "8000-9000"])
    );
    assert_eq!(view["callbacks"]["allowed_networks"][1], "10.1.0.0/16");
    let d = Config::parse(GOOD, "shim.toml", &env).unwrap();
    assert!(d.callbacks.allowed_networks.is_empty());
    assert_eq!(d.callbacks.allowed_ports, None);

    let e = err_of(&with("allowed_networks = [\"10.1.0.0/33\"]"));
    assert!(
        e.contains("`callbacks.allowed_networks`: \"10.1.0.0/33\" is not a network in CIDR form"),
        "{e}"
    );
    let e = err_of(&with("allowed_ports = [\"9-1\"]"));
    assert!(
        e.contains("`callbacks.allowed_ports`: \"9-1\" is not a port"),
        "{e}"
    );
    let e = err_of(&with("allowed_hosts = [\"a*.example.com\"]"));
    assert!(
        e.contains("`callbacks.allowed_hosts`: \"a*.example.com\" is not a host"),
        "{e}"
    );
    let e = err_of(&with("allowed_hosts = [\"http://x/\"]"));
    assert!(e.contains("`callbacks.allowed_hosts`"), "{e}");
}

#[test]
fn proxy_keys_are_resolved_and_checked() {
    let c = Config::parse(GOOD, "shim.toml", &env).unwrap();
    let p = &c.upstreams["jobs"].proxy;
    assert!(!p.enabled, "off by default");
    assert_eq!(p.max_wait, Duration::from_secs(5));
    assert_eq!(c.store.max_upstream_body, 256 << 10);
    assert!(!c.callbacks.include_upstream_body);

    let on = GOOD.replace(
        "[upstreams.jobs.webhook]",
        "proxy = { enabled = true, callback_url = \"http://127.0.0.1:9/cb\", max_wait = \"2s\", create = { path = \"/jobs/\", id_field = \"/id\" } }\n[upstreams.jobs.webhook]",
    );
    let c = Config::parse(&on, "shim.toml", &env).unwrap();
    let p = &c.upstreams["jobs"].proxy;
    assert!(p.enabled);
    assert_eq!(p.max_wait, Duration::from_secs(2));
    assert_eq!(p.callback_url.as_deref(), Some("http://127.0.0.1:9/cb"));
    let create = p.create.as_ref().unwrap();
    assert_eq!(
        (create.method.as_str(), create.path.as_str()),
        ("POST", "jobs")
    );

    let e = err_of(&on.replace("127.0.0.1:9/cb", "example.com/cb"));
    assert!(
        e.contains("`upstreams.jobs.proxy.callback_url`: host \"example.com\""),
        "{e}"
    );
    let e = err_of(&on.replace("id_field = \"/id\"", "id_field = \"id\""));
    assert!(e.contains("`upstreams.jobs.proxy.create.id_field`"), "{e}");
    let e = err_of(&on.replace("path = \"/jobs/\"", "method = \"PO ST\", path = \"jobs\""));
    assert!(e.contains("`upstreams.jobs.proxy.create.method`"), "{e}");
    let e = err_of(&on.replace("max_wait = \"2s\"", "max_wait = \"1h\""));
    assert!(
        e.contains("`upstreams.jobs.proxy.max_wait`: at most"),
        "{e}"
    );
    let openai = "[upstreams.o]\npreset = \"openai-batch\"\nheaders = { Authorization = \"x\" }\nproxy = { enabled = true, create = { path = \"x\", id_field = \"/id\" } }\n";
    let e = err_of(openai);
    assert!(
        e.contains("`upstreams.o.proxy.create`: preset \"openai-batch\" knows its own"),
        "{e}"
    );
    let e = err_of("[store]\nmax_upstream_body = \"1GiB\"\n");
    assert!(e.contains("`store.max_upstream_body`"), "{e}");
}

#[test]
fn redacted_view_has_no_secrets() {
    let c = Config::parse(GOOD, "shim.toml", &env).unwrap();
    let text = serde_json::to_string(&c.redacted()).unwrap();
    assert!(!text.contains("t0k"), "{text}");
    assert!(!text.contains("C2FVsBQ"), "{text}");
    assert!(
        text.contains("<redacted, from Bearer ${JOBS_TOKEN}>"),
        "{text}"
    );
}

#[test]
fn store_backend_defaults_to_sled() {
    let c = Config::parse(GOOD, "shim.toml", &env).unwrap();
    assert_eq!(c.store.backend, Backend::Sled);
}

#[test]
fn postgres_store_reads_its_url_from_the_environment_and_never_prints_it() {
    let url = "postgres://app:hunter2@127.0.0.1:5432/hooks";
    let lookup = |name: &str| match name {
        "MY_DB" => Some(url.to_string()),
        other => env(other),
    };
    let text = GOOD.replace(
        "[store]\n",
        "[store]\nbackend = \"postgres\"\nurl_env = \"MY_DB\"\npool_size = 3\nschema = \"hooks_1\"\n",
    );
    let c = Config::parse(&text, "shim.toml", &lookup).unwrap();
    let Backend::Postgres(pg) = &c.store.backend else {
        panic!("not postgres: {:?}", c.store.backend)
    };
    assert_eq!(
        (pg.url.as_str(), pg.pool_size, pg.schema.as_str()),
        (url, 3, "hooks_1")
    );
    assert_eq!(pg.lease, Duration::from_secs(30));
    let shown = format!("{} {:?}", c.redacted(), c.store);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted, from MY_DB>"), "{shown}");
}

#[test]
fn postgres_store_settings_are_checked() {
    let with = |extra: &str| GOOD.replace("[store]\n", &format!("[store]\n{extra}\n"));
    let e = err_of(&with("backend = \"postgre\""));
    assert!(
        e.contains("`store.backend`: \"postgre\" is not a store"),
        "{e}"
    );
    let e = err_of(&with("backend = \"postgres\"\nurl_env = \"NO_SUCH_VAR\""));
    assert!(e.contains("`store.url_env`: NO_SUCH_VAR is not set"), "{e}");
    let lookup = |name: &str| match name {
        "DB" => Some("postgres://u:secretpw@127.0.0.1:5432/x?sslmode=sometimes".to_string()),
        other => env(other),
    };
    let e = Config::parse(
        &with("backend = \"postgres\"\nurl_env = \"DB\""),
        "shim.toml",
        &lookup,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("the value of DB is not a PostgreSQL URL"), "{e}");
    assert!(!e.contains("secretpw"), "{e}");
    let good_url = |name: &str| match name {
        "DB" => Some("postgres://127.0.0.1/x".to_string()),
        other => env(other),
    };
    for (extra, expect) in [
        (
            "schema = \"Hooks\"",
            "`store.schema`: \"Hooks\" is not a plain schema name",
        ),
        ("schema = \"a; drop\"", "`store.schema`"),
        ("pool_size = 0", "`store.pool_size`: 0 is out of range"),
        (
            "lease = \"100ms\"",
            "`store.lease`: must be between 1s and 1h",
        ),
    ] {
        let text = with(&format!(
            "backend = \"postgres\"\nurl_env = \"DB\"\n{extra}"
        ));
        let e = Config::parse(&text, "shim.toml", &good_url)
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{extra}: {e}");
    }
}
