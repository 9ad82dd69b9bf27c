//! The command line as documented: user management, contacts, presence and CDR without a
//! server, `db migrate`, the global --data-dir and --database, and clear one-line startup
//! errors.
//!
//! The scenarios that touch the database take a [`Db`]: the tests here run them on SQLite
//! in a temporary data directory, and `cli_postgres` runs the same scenarios on a
//! throwaway PostgreSQL database, comparing what each prints.

use std::process::{Command, Stdio};

use switchboard_store::testing::PgDatabase;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// The variables the command reads, which a developer's environment must not leak into.
const ENV: [&str; 3] = [
    "SWITCHBOARD_DATA_DIR",
    "SWITCHBOARD_DATABASE",
    "SWITCHBOARD_HTTP",
];

/// The command, with none of those variables.
fn bin() -> Command {
    let mut cmd = Command::new(BIN);
    for var in ENV {
        cmd.env_remove(var);
    }
    cmd
}

fn outcome(out: std::process::Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the command on the SQLite database in `data_dir`.
pub(crate) fn run_in(data_dir: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = bin();
    outcome(
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .output()
            .unwrap(),
    )
}

/// Runs `f` to its end on a runtime of the test's own.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Where one test's data lives: a data directory, and the PostgreSQL database the test
/// runs on, if it runs on one (dropped with it).
pub(crate) struct Db {
    dir: tempfile::TempDir,
    pg: Option<PgDatabase>,
}

impl Db {
    pub(crate) fn sqlite() -> Db {
        Db {
            dir: tempfile::tempdir().unwrap(),
            pg: None,
        }
    }

    /// A fresh database on the test server `SWITCHBOARD_TEST_PG_URL` names; `None`, with a
    /// note, when it names none.
    pub(crate) fn postgres(test: &str) -> Option<Db> {
        if switchboard_store::testing::pg_server().is_none() {
            eprintln!(
                "skipped {test}: {} is not set (scripts/test.sh sets it to a throwaway cluster)",
                switchboard_store::testing::PG_URL_VAR
            );
            return None;
        }
        Some(Db {
            dir: tempfile::tempdir().unwrap(),
            pg: Some(PgDatabase::create_blocking()),
        })
    }

    pub(crate) fn dir(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    pub(crate) fn url(&self) -> Option<&str> {
        self.pg.as_ref().map(|db| db.url.as_str())
    }

    /// The global options naming this database.
    fn options(&self) -> Vec<&str> {
        let mut o = vec!["--data-dir", self.dir()];
        if let Some(url) = self.url() {
            o.extend(["--database", url]);
        }
        o
    }

    /// The command with the global options before the subcommand.
    pub(crate) fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = bin();
        cmd.args(self.options()).args(args);
        cmd
    }

    /// Runs the command line (see [`words`]) on this database.
    pub(crate) fn line(&self, line: &str) -> (bool, String, String) {
        outcome(self.command(&words(line)).output().unwrap())
    }

    /// Every data trait of this database, as the server would open it.
    fn data(&self) -> switchboard_store::Data {
        block_on(switchboard_store::data::open(self.url(), self.dir.path())).unwrap()
    }

    /// Records that a newer build migrated the database to `version`.
    fn record_schema(&self, version: i64) {
        let insert =
            format!("INSERT INTO schema_migrations (version, applied_at) VALUES ({version}, 0)");
        match &self.pg {
            Some(db) => db.execute_blocking(&insert),
            None => {
                rusqlite::Connection::open(self.dir.path().join("switchboard.db"))
                    .unwrap()
                    .execute_batch(&insert)
                    .unwrap();
            }
        }
    }

    /// Whether `secret` appears anywhere the database keeps users.
    fn holds(&self, secret: &str) -> bool {
        match &self.pg {
            Some(db) => block_on(async {
                let row = db
                    .client()
                    .await
                    .query_one(
                        "SELECT COALESCE(string_agg(u::text, ' '), '') FROM users u",
                        &[],
                    )
                    .await
                    .unwrap();
                row.get::<usize, String>(0).contains(secret)
            }),
            None => ["switchboard.db", "switchboard.db-wal"].iter().any(|f| {
                std::fs::read(self.dir.path().join(f))
                    .unwrap_or_default()
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes())
            }),
        }
    }
}

/// Users from birth to removal, the global options before and after the subcommand and
/// from the environment, the password from standard input, bulk import, and the errors.
pub(crate) fn user_management(db: &Db) {
    let (ok, out, _) =
        db.line("user add sip:Alice@Example.com --password pw1 --display-name 'Alice A.'");
    assert!(ok);
    assert!(out.contains("sip:alice@example.com"));
    // The global options after the subcommand work too; the password from stdin.
    let mut cmd = bin();
    cmd.args(["user", "add", "bob@example.com", "--password-stdin"])
        .args(db.options());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"pw-bob\n").unwrap();
    assert!(child.wait().unwrap().success());
    // And from the environment.
    let mut cmd = bin();
    cmd.args(["user", "list", "--json"])
        .env("SWITCHBOARD_DATA_DIR", db.dir());
    if let Some(url) = db.url() {
        cmd.env("SWITCHBOARD_DATABASE", url);
    }
    let (ok, out, err) = outcome(cmd.output().unwrap());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["address"], "alice@example.com");
    assert_eq!(list[0]["display_name"], "Alice A.");
    assert!(
        !out.contains("ha1") && !out.contains("pw1"),
        "no secrets in listings"
    );
    assert!(db.line("user disable alice@example.com").0);
    let (_, out, _) = db.line("user list");
    assert!(out
        .lines()
        .any(|l| l.contains("alice@example.com") && l.contains("disabled")));
    assert!(db.line("user enable alice@example.com").0);
    assert!(db.line("user passwd alice@example.com --password pw2").0);
    assert!(db.line("user remove bob@example.com").0);
    for (line, why) in [
        ("user remove bob@example.com", "no such user"),
        ("user add alice@example.com --password x", "already exists"),
        (
            "user add 'not an address' --password x",
            "not a user address",
        ),
        ("user add carol@example.com", "--password"),
    ] {
        assert_refused(&db.line(line), why);
    }
    // Bulk import.
    let csv = db.dir.path().join("users.csv");
    std::fs::write(
        &csv,
        "# address,password,display name\ncarol@example.com,pw-c,Carol\ndave@example.com,pw-d\n",
    )
    .unwrap();
    let (ok, out, _) = db.line(&format!("user import {}", csv.display()));
    assert!(ok && out.contains("imported 2"), "{out}");
    let (_, out, _) = db.line("user list");
    assert!(
        out.lines()
            .any(|l| l.contains("sip:carol@example.com") && l.ends_with("Carol")),
        "{out}"
    );
    // The database holds hashes only.
    assert!(!db.holds("pw-c"));
    assert!(db.holds("carol"), "the check looks where the users are");
}

#[test]
fn user_management_round_trip() {
    user_management(&Db::sqlite());
}

/// A command line split into its arguments: at spaces, except inside '…'.
fn words(line: &str) -> Vec<String> {
    let mut words = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => words.push(String::new()),
            c => words.last_mut().unwrap().push(c),
        }
    }
    words.retain(|w| !w.is_empty());
    words
}

/// Asserts that a command failed in one clear line saying `why`.
pub(crate) fn assert_refused((ok, _, err): &(bool, String, String), why: &str) {
    assert!(!ok && err.contains(why), "{why}: {err}");
    assert!(err.starts_with("switchboard: error: "), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one error line: {err}");
}

/// Each command below, its output and its error line, as one text to compare: the
/// data directory is written DIR, and the times the database stamps rows with (the
/// clock's) are left out.
pub(crate) struct Transcript(pub(crate) String);

impl Transcript {
    /// Runs the command `line` on `db`; answers what it did, and records its output.
    fn run(&mut self, db: &Db, line: &str) -> (bool, String, String) {
        let (ok, out, err) = db.line(line);
        self.0
            .push_str(&format!("$ {}\n", line.replace(db.dir(), "DIR")));
        for line in out.lines() {
            let stamped = ["\"created_at\":", "\"updated_at\":", "\"added_at_ms\":"]
                .iter()
                .any(|key| line.trim_start().starts_with(key));
            if !stamped {
                self.0.push_str(line);
                self.0.push('\n');
            }
        }
        if !err.is_empty() {
            self.0.push_str(&format!("stderr: {err}"));
        }
        (ok, out, err)
    }

    /// The output of `line`, which must succeed.
    fn ok(&mut self, db: &Db, line: &str) -> String {
        let (ok, out, err) = self.run(db, line);
        assert!(ok, "{line}: {err}");
        out
    }

    fn refused(&mut self, db: &Db, line: &str, why: &str) {
        assert_refused(&self.run(db, line), why);
    }
}

/// Call detail records as the server writes them: a two-party session of alice and bob,
/// ended, and an open conference grown from it.
fn seed_cdr(db: &Db) {
    use switchboard_store::{ParticipantRecord, Run, SessionRecord};
    let data = db.data();
    let session = |id: &str, kind: &str, at: i64| SessionRecord {
        id: id.into(),
        kind: kind.into(),
        started_at_ms: at,
        ended_at_ms: None,
        end_reason: None,
        initiator: "sip:alice@example.com".into(),
        organiser: (kind == "conference").then(|| "sip:alice@example.com".into()),
        escalated_from: None,
    };
    let participant = |who: &str, at: i64, messages: i64| ParticipantRecord {
        address: format!("sip:{who}@example.com"),
        device: format!("{who}-laptop"),
        joined_at_ms: at,
        left_at_ms: None,
        messages,
        bytes: messages * 10,
    };
    // 2026-11-25T08:00:00Z, and a conference grown from it an hour later.
    let t = 1_795_593_600_000;
    block_on(async {
        let cdr = &data.cdr;
        let run = cdr.begin_run(Run::STANDALONE, t).await.unwrap();
        cdr.start_session(
            &run,
            &session("s-two", "two-party", t),
            &[participant("alice", t, 0), participant("bob", t, 0)],
        )
        .await
        .unwrap();
        cdr.update_participants(&[
            ("s-two".into(), participant("alice", t, 3)),
            ("s-two".into(), participant("bob", t, 2)),
        ])
        .await
        .unwrap();
        cdr.end_session("s-two", t + 60_000, "bye").await.unwrap();
        let later = t + 3_600_000;
        cdr.start_session(
            &run,
            &session("s-conf", "conference", later),
            &[
                participant("alice", later, 1),
                participant("carol", later, 0),
            ],
        )
        .await
        .unwrap();
        cdr.set_escalated_from("s-conf", "s-two").await.unwrap();
    });
}

/// Contacts, presence without a client, and CDR, with no server running (`server` is an
/// address nothing answers at): what each command prints, which must not depend on the
/// backend.
pub(crate) fn without_a_server(db: &Db, server: &str) -> Transcript {
    let mut t = Transcript(String::new());
    let csv = db.dir.path().join("users.csv");
    std::fs::write(
        &csv,
        "alice@example.com,pw-a,Alice\nbob@example.com,pw-b,Bob\ncarol@example.com,pw-c,Carol\n",
    )
    .unwrap();
    t.ok(db, &format!("user import {}", csv.display()));
    let out = t.ok(db, "user list --json");
    let users: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(users[2]["display_name"], "Carol");

    // Contact lists.
    let alice = "alice@example.com";
    let out = t.ok(
        db,
        &format!("contacts add {alice} bob@example.com --group Team --relationship friends"),
    );
    assert!(out.contains("bob@example.com (friends)"), "{out}");
    let out = t.ok(db, &format!("contacts add {alice} carol@example.com"));
    assert!(
        out.contains("(colleagues)"),
        "the default in the domain: {out}"
    );
    let blocked = "mallory@elsewhere.example --relationship blocked";
    t.ok(db, &format!("contacts add {alice} {blocked}"));
    let out = t.ok(db, &format!("contacts list {alice}"));
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("Team"), "{out}");
    let out = t.ok(db, &format!("contacts list {alice} --json"));
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["contacts"][0]["contact"], "bob@example.com");
    assert_eq!(list["contacts"][0]["groups"][0], "Team");
    let remove = format!("contacts remove {alice} carol@example.com");
    t.ok(db, &remove);
    t.refused(db, &remove, "is not a contact of");
    let out = t.ok(db, "contacts list carol@example.com");
    assert!(out.contains("has no contacts"), "{out}");
    t.refused(db, "contacts list nobody@example.com", "no such user");

    // Presence without a client.
    let until = "--until 2999-01-01T00:00:00Z";
    let out = t.ok(
        db,
        &format!("presence set {alice} --availability busy --note 'In the lab' {until}"),
    );
    assert!(out.contains("busy until 2999-01-01"), "{out}");
    t.ok(
        db,
        &format!("presence card {alice} --title Engineer --email {alice}"),
    );
    let always = "--from 2000-01-01T00:00:00Z --to 2999-01-01T00:00:00Z";
    t.ok(
        db,
        &format!(
            "presence meeting carol@example.com {always} --subject Offsite --location 'Room 1'"
        ),
    );
    t.ok(
        db,
        &format!("presence oof bob@example.com {always} --note Away"),
    );
    t.refused(
        db,
        "presence set nobody@example.com --availability busy",
        "no such user",
    );
    // No server: the stored state, every device gone, as each watcher may see it.
    let show = |who: &str, rest: &str| format!("presence show {who} --server {server} {rest}");
    let out = t.ok(db, &show("carol@example.com", ""));
    assert!(
        out.contains("as seen by themself") && out.contains("\"Offsite\", in Room 1"),
        "{out}"
    );
    let out = t.ok(
        db,
        &show("carol@example.com", "--as alice@example.com --json"),
    );
    let view: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(view["audience"]["watcher"], "colleagues", "{out}");
    assert!(view["meeting"]["subject"].is_null(), "no subject: {out}");
    let out = t.ok(db, &show(alice, "--as bob@example.com"));
    for shown in ["level friends", "busy", "In the lab", "Engineer"] {
        assert!(out.contains(shown), "{shown}: {out}");
    }
    let out = t.ok(db, &show(alice, "--as mallory@elsewhere.example --json"));
    let view: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(view["availability"], "offline", "blocked: {out}");
    assert!(
        view["note"].is_null() && view["card"]["title"].is_null(),
        "{out}"
    );
    let out = t.ok(db, &format!("presence clear {alice}"));
    assert!(out.contains("cleared"), "{out}");
    let out = t.ok(db, &format!("presence clear {alice}"));
    assert!(out.contains("no availability was set by hand"), "{out}");

    // Call detail records, as the server writes them.
    assert!(t.ok(db, "cdr list").contains("no sessions"));
    seed_cdr(db);
    let out = t.ok(db, "cdr list");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(
        rows[1].starts_with("s-two") && rows[1].contains("bye"),
        "{out}"
    );
    assert!(
        rows[2].starts_with("s-conf") && rows[2].contains("(open)"),
        "{out}"
    );
    let out = t.ok(db, "cdr list --json");
    let sessions: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sessions[1]["escalated_from"], "s-two");
    assert_eq!(sessions[0]["participants"].as_array().unwrap().len(), 2);
    let out = t.ok(db, "cdr list --csv");
    let two = ",bye,sip:alice@example.com,sip:alice@example.com sip:bob@example.com,5,50";
    assert!(out.lines().nth(1).unwrap().ends_with(two), "{out}");
    let out = t.ok(db, "cdr list --user carol@example.com --csv");
    assert_eq!(out.lines().count(), 2, "carol took part in one: {out}");
    let out = t.ok(db, "cdr list --since 2026-11-25T08:30:00Z --json");
    let since: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(since[0]["id"], "s-conf");
    let out = t.ok(db, "cdr show s-conf");
    assert!(
        out.contains("escalated from s-two") && out.contains("carol-laptop"),
        "{out}"
    );
    let out = t.ok(db, "cdr show s-two --json");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["session"]["end_reason"], "bye");
    assert_eq!(shown["participants"][1]["messages"], 2);
    t.refused(db, "cdr show nope", "no session with id nope");
    t
}

/// An address where nothing answers (a port just freed).
pub(crate) fn nobody_answers() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn contacts_presence_and_cdr_without_a_server() {
    let t = without_a_server(&Db::sqlite(), &nobody_answers());
    assert!(t.0.contains("$ cdr show nope\nstderr: "), "{}", t.0);
}

/// `db migrate` from an empty database and again, then a database a newer build
/// migrated: refused, in one clear line, by every command.
pub(crate) fn migrate_and_refuse_a_newer_schema(db: &Db) {
    let known = switchboard_store::SCHEMA_VERSION;
    let (ok, out, err) = db.line("db migrate");
    assert!(ok, "{err}");
    assert_eq!(out, format!("schema version {known} (was 0)\n"));
    let (ok, out, _) = db.line("db migrate");
    assert!(ok);
    assert_eq!(out, format!("schema version {known} (was {known})\n"));
    assert!(db.line("user add alice@example.com --password pw").0);

    db.record_schema(known + 1);
    let too_new = format!(
        "database schema version {} is newer than this program knows ({known}); upgrade switchboard",
        known + 1
    );
    for line in [
        "db migrate",
        "user list",
        "contacts list alice@example.com",
        "cdr list",
    ] {
        let refused = db.line(line);
        assert_refused(&refused, &too_new);
        assert!(refused.1.is_empty(), "{line}: {}", refused.1);
    }
}

#[test]
fn db_migrate_and_a_newer_schema() {
    let db = Db::sqlite();
    migrate_and_refuse_a_newer_schema(&db);
    // The server refuses it too.
    let serve = "serve --http off --sip-udp 127.0.0.1:0 --sip-tcp off --sip-tls off";
    assert_refused(&db.line(serve), "is newer than this program knows");
}

#[test]
fn database_urls_sqlite_forms_and_refusals() {
    let db = Db::sqlite();
    // sqlite: is the data directory's database, as no URL is.
    let (ok, out, err) = db.line("--database sqlite: user add alice@example.com --password pw");
    assert!(ok && out.contains("added"), "{err}");
    let mut cmd = db.command(&["user", "list"]);
    cmd.env("SWITCHBOARD_DATABASE", "sqlite://");
    let (ok, out, _) = outcome(cmd.output().unwrap());
    assert!(ok && out.contains("sip:alice@example.com"), "{out}");
    assert!(db.line("user list").1.contains("sip:alice@example.com"));

    // Anything else: one line naming the accepted forms, and never the password.
    for url in ["mysql://root:secret@db/switchboard", "sqlite:/tmp/x.db"] {
        let refused = db.line(&format!("user list --database {url}"));
        assert_refused(&refused, "sqlite:");
        assert!(!refused.2.contains("secret"), "{}", refused.2);
    }
    assert_refused(
        &db.line("--database mysql://root:secret@db/x db migrate"),
        "use postgres://… or postgresql://…",
    );

    // A PostgreSQL server that is not there: unavailable, promptly, in one line.
    let closed = nobody_answers();
    let url = format!("postgres://sb:secret@{closed}/switchboard?connect_timeout=2");
    let began = std::time::Instant::now();
    let refused = db.line(&format!("--database {url} user list"));
    assert_refused(
        &refused,
        &format!("cannot open the PostgreSQL database switchboard on {closed}: the database is unavailable"),
    );
    assert!(!refused.2.contains("secret"), "{}", refused.2);
    assert!(began.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn serve_takes_the_database_from_flag_env_or_file() {
    let db = Db::sqlite();
    let cfg = db.dir.path().join("db.toml");
    // With every SIP transport off the server stops before it opens any database; with
    // one on it opens the database first.
    let serve = format!(
        "serve --http off --sip-udp off --sip-tcp off --sip-tls off --config {}",
        cfg.display()
    );
    let serve_udp = format!(
        "serve --http off --sip-udp 127.0.0.1:0 --sip-tcp off --sip-tls off --config {}",
        cfg.display()
    );
    // Nothing listens on port 1: the server says it cannot open that database.
    let unreachable = "cannot open the PostgreSQL database sb";
    let all_off = "every SIP transport is off";
    std::fs::write(&cfg, "").unwrap();
    // The flag, and the file.
    let refused = db.line(&format!(
        "{serve_udp} --database postgres://sb:secret@127.0.0.1:1/sb"
    ));
    assert_refused(&refused, unreachable);
    assert!(!refused.2.contains("secret"), "{}", refused.2);
    std::fs::write(
        &cfg,
        "[database]\nurl = \"postgresql://sb@127.0.0.1:1/sb\"\n",
    )
    .unwrap();
    assert_refused(&db.line(&serve_udp), unreachable);
    // The flag and the environment win over the file.
    assert_refused(
        &db.line(&format!("{serve} --database mysql://x")),
        "unsupported database URL 'mysql:",
    );
    let mut cmd = db.command(&words(&serve));
    cmd.env("SWITCHBOARD_DATABASE", "sqlite:");
    assert_refused(&outcome(cmd.output().unwrap()), all_off);
    // A file naming SQLite is accepted.
    std::fs::write(&cfg, "[database]\nurl = \"sqlite:\"\n").unwrap();
    assert_refused(&db.line(&serve), all_off);
}

fn serve(d: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--data-dir", d, "serve", "--http", "off"];
    args.extend_from_slice(extra);
    let out = bin().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        assert!(err.starts_with("switchboard: error: "), "{err}");
    }
    (out.status.success(), err)
}

#[test]
fn startup_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // Port in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let (ok, err) = serve(
        d,
        &["--sip-udp", "off", "--sip-tls", "off", "--sip-tcp", &addr],
    );
    assert!(!ok);
    assert!(
        err.contains("cannot listen for SIP over TCP") && err.contains("--sip-tcp"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Bad certificate file.
    let cfg = dir.path().join("bad-cert.toml");
    std::fs::write(
        &cfg,
        "[tls]\ncertificate = \"/nonexistent/cert.pem\"\nprivate_key = \"/nonexistent/key.pem\"\n",
    )
    .unwrap();
    let (ok, err) = serve(
        d,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--sip-udp",
            "off",
            "--sip-tcp",
            "off",
            "--sip-tls",
            "127.0.0.1:0",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("cannot read TLS certificate /nonexistent/cert.pem"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Unusable data directory (a file where the directory should be).
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (ok, err) = serve(
        file.to_str().unwrap(),
        &[
            "--sip-udp",
            "127.0.0.1:0",
            "--sip-tcp",
            "off",
            "--sip-tls",
            "off",
        ],
    );
    assert!(!ok);
    assert!(err.contains("cannot open the data directory"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Config errors quote the offending line of the file.
    // Unknown config keys are refused, not ignored.
    std::fs::write(&cfg, "[sip]\nudpp = \"127.0.0.1:5060\"\n").unwrap();
    let (ok, err) = serve(d, &["--config", cfg.to_str().unwrap()]);
    assert!(!ok && err.contains("unknown field"), "{err}");
    // Every transport off.
    let (ok, err) = serve(
        d,
        &["--sip-udp", "off", "--sip-tcp", "off", "--sip-tls", "off"],
    );
    assert!(!ok && err.contains("every SIP transport is off"), "{err}");
}

#[test]
fn serve_runs_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut child = bin()
        .args([
            "--data-dir",
            d,
            "--log-format",
            "json",
            "serve",
            "--sip-udp",
            "127.0.0.1:0",
            "--sip-tcp",
            "127.0.0.1:0",
            "--sip-tls",
            "127.0.0.1:0",
            "--http",
            "off",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        use std::io::Read;
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dir.path().join("tls/ca.pem").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let log = reader.join().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {log}");
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "JSON logs: {log}"
    );
    assert!(log.contains("shutting down"));
    // The generated certificate exists and its key is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("tls/server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key readable by owner only");
}
