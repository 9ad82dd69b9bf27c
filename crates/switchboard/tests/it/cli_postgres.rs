//! The CLI scenarios of `cli` again on PostgreSQL: each test on a fresh database of its
//! own on the server `SWITCHBOARD_TEST_PG_URL` names (`scripts/test.sh` starts a
//! throwaway cluster for them), dropped afterwards. Without that variable each test
//! says it was skipped and passes.
//!
//! Every command must work on either backend and print the same: the scenario without a
//! server runs on SQLite too, and the two transcripts must be equal.

use crate::cli::{self, Db};

#[test]
fn user_management_round_trip() {
    let Some(db) = Db::postgres("cli_postgres::user_management_round_trip") else {
        return;
    };
    cli::user_management(&db);
}

#[test]
fn contacts_presence_and_cdr_print_what_they_print_on_sqlite() {
    let Some(db) = Db::postgres("cli_postgres::contacts_presence_and_cdr") else {
        return;
    };
    let server = cli::nobody_answers();
    let on_postgres = cli::without_a_server(&db, &server);
    let on_sqlite = cli::without_a_server(&Db::sqlite(), &server);
    assert_eq!(on_postgres.0, on_sqlite.0);
}

#[test]
fn db_migrate_and_a_newer_schema() {
    let Some(db) = Db::postgres("cli_postgres::db_migrate_and_a_newer_schema") else {
        return;
    };
    cli::migrate_and_refuse_a_newer_schema(&db);
}

#[test]
fn what_one_backend_wrote_the_other_does_not_see() {
    let Some(db) = Db::postgres("cli_postgres::what_one_backend_wrote") else {
        return;
    };
    let (ok, _, err) = db.line("user add alice@example.com --password pw");
    assert!(ok, "{err}");
    // The same data directory without --database: SQLite, empty.
    let (ok, out, err) = cli::run_in(db.dir(), &["user", "list"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("no users"), "{out}");
    assert!(std::path::Path::new(db.dir())
        .join("switchboard.db")
        .exists());
    let (_, out, _) = db.line("user list");
    assert!(out.contains("sip:alice@example.com"), "{out}");
}
