//! The PostgreSQL store's own behaviour: what it writes, a schema newer than the binary,
//! losing the database and getting it back, two processes on one database. (The behaviour
//! every store shares runs on both backends in `lifecycle`, `delivery` and `ops`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::common::*;

/// The test database's schema for a test, or return (skipped) when there is none.
macro_rules! pg_or_skip {
    () => {
        match Backend::postgres().await {
            Some(Backend::Postgres(db)) => db,
            _ => return,
        }
    };
}

#[tokio::test]
async fn operations_outbox_and_webhook_ids_are_rows_in_the_database() {
    let db = pg_or_skip!();
    let store = Backend::Postgres(db.clone());
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let shim = TestShim::start_on(&store, CONFIG, &up, &recv).await;
    up.set("pushy/r1", json!({"state": "running"}));
    let (code, op) = shim
        .register(json!({"upstream": "pushy", "operation": "r1"}))
        .await;
    assert_eq!(code, 201, "{op}");
    let id = id_of(&op);
    let rows = db
        .query("SELECT id, upstream, operation, status FROM operations")
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), id);
    assert_eq!(rows[0].get::<_, String>(2), "r1");
    let event = json!({"type": "job.completed", "data": {"id": "r1"}});
    let (code, _) = shim
        .send_webhook("pushy", PUSHY_SECRET, "msg_rows_1", &event)
        .await;
    assert_eq!(code, 200);
    let seen = db.query("SELECT webhook_id FROM inbox").await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].get::<_, String>(0), "msg_rows_1");
    up.set("pushy/r1", json!({"state": "done"}));
    wait_status(&shim, &id, "succeeded").await;
    exactly_one_callback(&recv, &id, QUIET).await;
    // Delivered: nothing left in the outbox, and the schema is at the binary's version.
    eventually(Duration::from_secs(5), "an empty outbox", || async {
        db.query("SELECT 1 FROM outbox")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    let version = db.query("SELECT max(version) FROM schema_migrations").await;
    assert_eq!(
        version[0].get::<_, Option<i32>>(0),
        Some(hookshim::store::latest_schema_version())
    );
}

/// The real binary on a schema another (newer) hookshim migrated past what it knows.
#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused_with_exit_2() {
    let db = pg_or_skip!();
    db.execute(&format!(
        "CREATE SCHEMA {s}; CREATE TABLE {s}.schema_migrations (version integer PRIMARY KEY, \
         applied_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO {s}.schema_migrations (version) VALUES (999);",
        s = db.schema
    ))
    .await;
    let mut setup = ProcSetup::new(&format!(
        "[server]\nlisten = \"127.0.0.1:{{PORT}}\"\n\n[store]\nbackend = \"postgres\"\n\
         schema = \"{}\"\n",
        db.schema
    ));
    let url = db.hookshim_url();
    let mut proc = setup.spawn_with_env(&[("HOOKSHIM_DATABASE_URL", url.as_str())]);
    let status = proc
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("hookshim exits");
    assert_eq!(status.code(), Some(2));
    let stderr = std::fs::read_to_string(setup.logs.last().unwrap()).unwrap();
    assert!(
        stderr.contains(&format!(
            "the database schema \"{}\" is at version 999",
            db.schema
        )) && stderr.contains("a newer hookshim migrated it"),
        "{stderr}"
    );
}

/// A loopback forwarder to the test database that the test can cut (every connection closed,
/// new ones refused) and restore: the database "lost" without stopping the shared server.
struct Cuttable {
    url: String,
    cut: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Cuttable {
    async fn start(db: &PgSchema) -> Cuttable {
        let target: tokio_postgres::Config = db.url.parse().unwrap();
        let host = match &target.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            other => panic!("the test database must be reached over TCP: {other:?}"),
        };
        let port = target.get_ports().first().copied().unwrap_or(5432);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c, l) = (cut.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let Ok(mut outbound) = TcpStream::connect((host.as_str(), port)).await else {
                    continue;
                };
                l.lock().await.push(tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }));
            }
        });
        // The same database, user and options, through the forwarder.
        let mut url: reqwest::Url = db.hookshim_url().parse().unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(addr.port())).unwrap();
        Cuttable {
            url: url.to_string(),
            cut,
            links,
        }
    }

    async fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().await.drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn losing_the_database_answers_503_and_service_resumes_when_it_is_back() {
    let db = pg_or_skip!();
    let store = Backend::Postgres(db.clone());
    let link = Cuttable::start(&db).await;
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let (config, _) = store.apply(CONFIG);
    let shim = TestShim::start_on_with_env(
        &Backend::Sled, // the config is already PostgreSQL's: only the URL differs
        &config,
        &up,
        &recv,
        vec![(TEST_URL_ENV.to_string(), link.url.clone())],
    )
    .await;
    up.set("jobs/before", json!({"state": "running"}));
    let (code, op) = shim
        .register(json!({"upstream": "jobs", "operation": "before"}))
        .await;
    assert_eq!(code, 201, "{op}");
    let before = id_of(&op);
    assert_eq!(shim.get("/readyz").await.0, 200);

    link.cut().await;
    let (code, body) = shim.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["store"], false, "{body}");
    assert!(
        body["store_error"]
            .as_str()
            .is_some_and(|e| e.contains("the database is unavailable")),
        "{body}"
    );
    let (code, body) = shim
        .register(json!({"upstream": "jobs", "operation": "during"}))
        .await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    let (code, body) = shim.get(&format!("/v1/operations/{before}")).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");

    link.restore();
    eventually(Duration::from_secs(20), "ready again", || async {
        (shim.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    // Nothing was acknowledged while it was gone: the refused registration is not there.
    let (code, list) = shim
        .get("/v1/operations?upstream=jobs&operation=during")
        .await;
    assert_eq!(code, 200);
    assert_eq!(list["operations"], json!([]), "{list}");
    let (code, op) = shim
        .register(json!({"upstream": "jobs", "operation": "after"}))
        .await;
    assert_eq!(code, 201, "{op}");
    // The operation registered before the loss still finishes, with its one callback.
    up.set("jobs/before", json!({"state": "done"}));
    wait_status(&shim, &before, "succeeded").await;
    exactly_one_callback(&recv, &before, QUIET).await;
}

/// Two hookshim processes on one database: the same operation registered at both at once is
/// one record, and a webhook at either reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_database_share_operations_and_webhooks() {
    let db = pg_or_skip!();
    let store = Backend::Postgres(db.clone());
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let a = TestShim::start_on(&store, CONFIG, &up, &recv).await;
    let b = TestShim::start_on(&store, CONFIG, &up, &recv).await;
    for n in 0..20 {
        let name = format!("both{n}");
        up.set(&format!("pushy/{name}"), json!({"state": "running"}));
        let body = json!({"upstream": "pushy", "operation": name});
        let (ra, rb) = tokio::join!(a.register(body.clone()), b.register(body));
        assert_eq!(ra.1["id"], rb.1["id"], "{ra:?} {rb:?}");
        let mut codes = [ra.0, rb.0];
        codes.sort();
        assert_eq!(codes, [200, 201], "one created, one found: {ra:?} {rb:?}");
    }
    // Registered at A, finished by a webhook at B: one verified callback.
    let (_, op) = a
        .register(json!({"upstream": "pushy", "operation": "both0"}))
        .await;
    let id = id_of(&op);
    let (code, _) = b.get(&format!("/v1/operations/{id}")).await;
    assert_eq!(code, 200);
    up.set("pushy/both0", json!({"state": "done", "output": {"n": 0}}));
    let event = json!({"type": "job.completed", "data": {"id": "both0"}});
    let (code, body) = b
        .send_webhook("pushy", PUSHY_SECRET, "msg_two_1", &event)
        .await;
    assert_eq!(code, 200, "{body}");
    // The same webhook id again, at the other process: a duplicate.
    let (code, body) = a
        .send_webhook("pushy", PUSHY_SECRET, "msg_two_1", &event)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], "duplicate", "{body}");
    let done = wait_status(&a, &id, "succeeded").await;
    assert_eq!(done["detected_via"], "webhook");
    let call = exactly_one_callback(&recv, &id, QUIET).await;
    assert!(call.verified);
    assert_eq!(call.webhook_id, format!("{id}_terminal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_the_database_under_load_loses_no_acknowledged_operation() {
    const N: usize = 120;
    let db = pg_or_skip!();
    let store = Backend::Postgres(db.clone());
    let link = Arc::new(Cuttable::start(&db).await);
    let up = FakeUpstream::start().await;
    let recv = Receiver::start().await;
    let (config, _) = store.apply(CONFIG);
    let shim = TestShim::start_on_with_env(
        &Backend::Sled, // the config is already PostgreSQL's: only the URL differs
        &config,
        &up,
        &recv,
        vec![(TEST_URL_ENV.to_string(), link.url.clone())],
    )
    .await;
    for n in 0..N {
        up.set(
            &format!("jobs/u{n}"),
            json!({"state": "done", "output": {"n": n}}),
        );
    }
    // Registrations, 8 at a time, while the database goes away twice and comes back.
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut set = tokio::task::JoinSet::new();
    for n in 0..N {
        if n == N / 3 || n == 2 * N / 3 {
            link.cut().await;
            let link = link.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                link.restore();
            });
        }
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (http, url) = (shim.http.clone(), shim.url.clone());
        set.spawn(async move {
            let _permit = permit;
            let r = http
                .post(format!("{url}/v1/operations"))
                .json(&json!({"upstream": "jobs", "operation": format!("u{n}")}))
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (n, code, body)
        });
    }
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    while let Some(r) = set.join_next().await {
        let (n, code, body) = r.unwrap();
        match code {
            201 => acknowledged.push((n, id_of(&body))),
            503 => {
                assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
                refused.push(n);
            }
            other => panic!("u{n}: {other} {body}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "the cuts refused nothing: they came too late"
    );
    eventually(Duration::from_secs(20), "ready again", || async {
        (shim.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    // Every acknowledged operation is there and gets its one callback.
    for (n, id) in &acknowledged {
        let (code, op) = shim.get(&format!("/v1/operations/{id}")).await;
        assert_eq!(code, 200, "u{n} was acknowledged: {op}");
    }
    // A poll or callback that met the cut is tried again 30 s later (as after any store error).
    let started = std::time::Instant::now();
    loop {
        let missing: Vec<&(usize, String)> = acknowledged
            .iter()
            .filter(|(_, id)| recv.calls_for(id).is_empty())
            .collect();
        if missing.is_empty() {
            break;
        }
        if started.elapsed() > Duration::from_secs(40) {
            for (n, id) in &missing {
                let rows = db
                    .query(&format!(
                        "SELECT status, poll_at, lease_owner, lease_until, lease_token, \
                         (SELECT count(*) FROM outbox WHERE op_id = '{id}') FROM operations \
                         WHERE id = '{id}'"
                    ))
                    .await;
                let r = &rows[0];
                eprintln!(
                    "u{n} {id}: {} poll_at={:?} owner={:?} until={:?} token={} outbox={}",
                    r.get::<_, String>(0),
                    r.get::<_, Option<i64>>(1),
                    r.get::<_, Option<String>>(2),
                    r.get::<_, Option<i64>>(3),
                    r.get::<_, i64>(4),
                    r.get::<_, i64>(5)
                );
            }
            eprintln!("now {}", time_now_secs());
            panic!(
                "{} acknowledged operations without a callback",
                missing.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (n, id) in &acknowledged {
        let ids: std::collections::BTreeSet<String> = recv
            .calls_for(id)
            .into_iter()
            .map(|c| c.webhook_id)
            .collect();
        assert_eq!(ids.len(), 1, "u{n}: one webhook-id");
    }
    // A refused registration, retried as a client would, is registered (or was, after all).
    for n in refused {
        let (code, body) = shim
            .register(json!({"upstream": "jobs", "operation": format!("u{n}")}))
            .await;
        assert!(code == 201 || code == 200, "u{n}: {code} {body}");
    }
}
