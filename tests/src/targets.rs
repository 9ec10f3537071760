//! The two targets the conformance tests run against, behind one set-up and read-back API.

use std::path::Path;
use std::sync::Arc;

use d1_sync::target::Statement;
use d1_sync::{D1Http, SqliteTarget, TableDef, Target, TargetError};

use crate::d1peer::{D1Peer, TestDb};

/// A target under test, with a way to set it up and read it back.
#[derive(Clone)]
pub enum TestTarget {
    /// A local SQLite file.
    Sqlite(Arc<SqliteTarget>),
    /// A database of the local D1 peer.
    D1(Arc<D1Http>, TestDb),
}

impl TestTarget {
    /// A fresh SQLite file in `dir`.
    pub fn sqlite(dir: &Path) -> TestTarget {
        TestTarget::Sqlite(Arc::new(
            SqliteTarget::open(dir.join("target.db")).expect("open the target file"),
        ))
    }

    /// A fresh database of this binary's D1 peer.
    pub fn d1() -> TestTarget {
        let db = D1Peer::shared().database();
        TestTarget::D1(Arc::new(db.client()), db)
    }

    /// The peer database, for fault scripts.
    pub fn test_db(&self) -> Option<&TestDb> {
        match self {
            TestTarget::D1(_, db) => Some(db),
            TestTarget::Sqlite(_) => None,
        }
    }

    /// Runs statements (set-up: DDL, seed rows).
    pub async fn exec(&self, sqls: &[&str]) -> Result<(), TargetError> {
        let statements: Vec<Statement> = sqls.iter().map(|s| Statement::new(*s)).collect();
        match self {
            TestTarget::Sqlite(t) => t.execute_statements(&statements).await,
            TestTarget::D1(d, _) => d.query(&statements).await.map(drop),
        }
    }

    /// Creates the tables of the schema at `path` (a file or folder of migrations).
    pub async fn apply_schema(&self, path: &Path) {
        let schema = d1_sync::schema::load_schema(path).expect("load the schema");
        let ddl: Vec<&str> = schema.ddl.iter().map(String::as_str).collect();
        self.exec(&ddl)
            .await
            .expect("create the schema on the target");
    }

    /// Every row of `table`, exactly (see `d1_sync::verify`).
    pub async fn dump(&self, table: &TableDef) -> Vec<String> {
        self.shared()
            .dump(table)
            .await
            .expect("dump the target table")
            .expect("both test targets can be read back")
    }

    /// The target, shared with a worker.
    pub fn shared(&self) -> Arc<dyn Target> {
        match self {
            TestTarget::Sqlite(t) => t.clone(),
            TestTarget::D1(d, _) => d.clone(),
        }
    }
}
