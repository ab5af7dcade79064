//! The registry tables (`distill.job_registry`, `distill.model_registry`): every SQL statement that
//! reads or writes them.
//!
//! The tables are private. Functions reach them as the tables' owner ([`as_owner`]) after checking the
//! caller's rights themselves, like SECURITY DEFINER functions. Everything here runs as that owner, so
//! every name is schema-qualified, operators included (`OPERATOR(pg_catalog.=)`): a caller's
//! search_path must not be able to substitute a function or operator of its own.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};

use pgrx::PgSqlErrorCode::*;

use crate::errors::report_sql;

/// Runs `f` with the registry owner's privileges. The previous identity is restored afterwards; on an
/// ERROR the (sub)transaction abort restores it.
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = Spi::get_one::<pg_sys::Oid>(
        "SELECT c.relowner FROM pg_catalog.pg_class c \
         WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass('distill.job_registry')",
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| report_sql(ERRCODE_UNDEFINED_TABLE, "the pg_distill registry tables are missing", None));
    let (mut uid, mut ctx) = (pg_sys::Oid::INVALID, 0i32);
    // SAFETY: plain reads/writes of the backend's current user id; main thread.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut uid, &mut ctx);
        pg_sys::SetUserIdAndSecContext(owner, ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let r = f();
    unsafe { pg_sys::SetUserIdAndSecContext(uid, ctx) };
    r
}

/// The calling role and whether it is a superuser (read before any [`as_owner`]).
pub fn caller() -> (pg_sys::Oid, bool) {
    unsafe { (pg_sys::GetUserId(), pg_sys::superuser()) }
}

/// The first column of the first row, None when there is no row (or the value is NULL).
fn one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    match Spi::get_one_with_args::<T>(sql, args) {
        Ok(v) => v,
        Err(pgrx::spi::SpiError::InvalidPosition) => None,
        Err(e) => report_sql(ERRCODE_INTERNAL_ERROR, &e.to_string(), None),
    }
}

// ---- jobs -------------------------------------------------------------------------------------

pub struct NewJob<'a> {
    pub model: &'a str,
    pub base_model: &'a str,
    pub owner: pg_sys::Oid,
    pub training_sql: &'a str,
    pub validation_sql: Option<&'a str>,
    pub options: serde_json::Value,
    pub search_path: String,
}

/// Queues a job; None when an unfinished job for the same model name exists (also under a race: the
/// partial unique index decides, ON CONFLICT turns the loser into None).
pub fn insert_job(j: &NewJob) -> Option<String> {
    as_owner(|| {
        one::<String>(
            "INSERT INTO distill.job_registry (id, model, base_model, owner, training_sql, validation_sql, options, search_path) \
             VALUES ('ft_' OPERATOR(pg_catalog.||) pg_catalog.gen_random_uuid(), $1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (model) WHERE status IN ('PENDING', 'IN_PROGRESS') DO NOTHING RETURNING id",
            &[
                j.model.into(),
                j.base_model.into(),
                j.owner.into(),
                j.training_sql.into(),
                j.validation_sql.into(),
                JsonB(j.options.clone()).into(),
                j.search_path.as_str().into(),
            ],
        )
    })
}

/// A job's row as JSON, if it exists and the caller may see it.
pub fn job_row(id: &str) -> Option<serde_json::Value> {
    let (caller, is_super) = caller();
    as_owner(|| {
        one::<JsonB>(
            "SELECT pg_catalog.to_jsonb(j) OPERATOR(pg_catalog.||) \
                    pg_catalog.jsonb_build_object('owner', j.owner::pg_catalog.text) \
             FROM distill.job_registry j WHERE j.id OPERATOR(pg_catalog.=) $1 \
             AND ($3 OR pg_catalog.pg_has_role($2, j.owner, 'USAGE'))",
            &[id.into(), caller.into(), is_super.into()],
        )
    })
    .map(|j| j.0)
}

/// The caller's jobs (all jobs for a superuser), oldest first.
pub fn job_rows() -> Vec<serde_json::Value> {
    let (caller, is_super) = caller();
    let all = as_owner(|| {
        one::<JsonB>(
            "SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(j) ORDER BY j.created_on, j.id), '[]'::pg_catalog.jsonb) \
             FROM distill.job_registry j WHERE $2 OR pg_catalog.pg_has_role($1, j.owner, 'USAGE')",
            &[caller.into(), is_super.into()],
        )
    });
    match all {
        Some(JsonB(serde_json::Value::Array(rows))) => rows,
        _ => Vec::new(),
    }
}

/// Asks an unfinished job to stop: a PENDING job is CANCELLED at once, an IN_PROGRESS one is flagged
/// for its worker (which stops within one training step). Returns whether a job was changed.
pub fn cancel_job(id: &str) -> bool {
    let (caller, is_super) = caller();
    as_owner(|| {
        one::<bool>(
            "UPDATE distill.job_registry j SET \
                status = CASE WHEN j.status OPERATOR(pg_catalog.=) 'PENDING' THEN 'CANCELLED' ELSE j.status END, \
                finished_on = CASE WHEN j.status OPERATOR(pg_catalog.=) 'PENDING' THEN pg_catalog.now() END, \
                cancel_requested = true \
             WHERE j.id OPERATOR(pg_catalog.=) $1 AND j.status IN ('PENDING', 'IN_PROGRESS') \
               AND ($3 OR pg_catalog.pg_has_role($2, j.owner, 'USAGE')) \
             RETURNING true",
            &[id.into(), caller.into(), is_super.into()],
        )
    })
    .unwrap_or(false)
}

// ---- models -----------------------------------------------------------------------------------

/// A fine-tuned model as the registry knows it, and whether the caller may use it.
#[derive(Debug, Clone, PartialEq)]
pub struct TunedModel {
    pub version: i64,
    pub base_model: String,
    pub owner: String,
    /// The caller owns it (or belongs to its owner), is a superuser, or was granted it.
    pub usable: bool,
}

pub fn find_model(name: &str) -> Option<TunedModel> {
    let (caller, is_super) = caller();
    let row = as_owner(|| {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT m.version, m.base_model, m.owner::pg_catalog.text,
                        $3 OR pg_catalog.pg_has_role($2, m.owner, 'USAGE') OR EXISTS (
                            SELECT FROM distill.model_grants g WHERE g.model OPERATOR(pg_catalog.=) m.name
                            AND CASE WHEN g.grantee::pg_catalog.oid OPERATOR(pg_catalog.=) 0::pg_catalog.oid THEN true
                                     ELSE pg_catalog.pg_has_role($2, g.grantee, 'USAGE') END)
                 FROM distill.model_registry m WHERE m.name OPERATOR(pg_catalog.=) $1",
                None,
                &[name.into(), caller.into(), is_super.into()],
            )?;
            if t.is_empty() {
                return Ok::<_, pgrx::spi::SpiError>(None);
            }
            let r = t.first();
            Ok(Some(TunedModel {
                version: r.get(1)?.unwrap_or_default(),
                base_model: r.get(2)?.unwrap_or_default(),
                owner: r.get(3)?.unwrap_or_default(),
                usable: r.get(4)?.unwrap_or(false),
            }))
        })
    });
    row.unwrap_or_else(|e| report_sql(ERRCODE_INTERNAL_ERROR, &e.to_string(), None))
}

/// The adapter blob of a model at a given version (None if it was replaced or dropped meanwhile).
pub fn adapter_blob(name: &str, version: i64) -> Option<Vec<u8>> {
    as_owner(|| {
        one::<Vec<u8>>(
            "SELECT m.adapter FROM distill.model_registry m \
             WHERE m.name OPERATOR(pg_catalog.=) $1 AND m.version OPERATOR(pg_catalog.=) $2",
            &[name.into(), version.into()],
        )
    })
}

pub fn model_taken(name: &str) -> bool {
    as_owner(|| {
        one::<bool>(
            "SELECT EXISTS (SELECT FROM distill.model_registry m WHERE m.name OPERATOR(pg_catalog.=) $1)",
            &[name.into()],
        )
    })
    .unwrap_or(false)
}

pub enum Dropped {
    Done,
    NotFound,
    NotOwner,
}

/// Whether the caller owns model `name` (or is a superuser); None if there is no such model.
pub fn owns_model(name: &str) -> Option<bool> {
    let (caller, is_super) = caller();
    as_owner(|| {
        one::<bool>(
            "SELECT $3 OR pg_catalog.pg_has_role($2, m.owner, 'USAGE') FROM distill.model_registry m \
             WHERE m.name OPERATOR(pg_catalog.=) $1",
            &[name.into(), caller.into(), is_super.into()],
        )
    })
}

/// Lets `grantee` (0: PUBLIC) use model `name`, or stops letting it. The caller's ownership is checked first.
pub fn set_grant(name: &str, grantee: pg_sys::Oid, grant: bool) {
    let sql = if grant {
        "INSERT INTO distill.model_grants (model, grantee) \
         VALUES ($1, $2::pg_catalog.oid::pg_catalog.regrole) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM distill.model_grants g WHERE g.model OPERATOR(pg_catalog.=) $1 \
         AND g.grantee::pg_catalog.oid OPERATOR(pg_catalog.=) $2::pg_catalog.oid"
    };
    // As int8: pgrx sends the invalid oid 0 (PUBLIC) as NULL.
    as_owner(|| Spi::run_with_args(sql, &[name.into(), (grantee.to_u32() as i64).into()]))
        .unwrap_or_else(|e| report_sql(ERRCODE_INTERNAL_ERROR, &e.to_string(), None));
}

/// Deletes a model the caller owns (or any, for a superuser).
pub fn drop_model(name: &str) -> Dropped {
    match owns_model(name) {
        None => Dropped::NotFound,
        Some(false) => Dropped::NotOwner,
        Some(true) => {
            as_owner(|| {
                Spi::run_with_args(
                    "DELETE FROM distill.model_registry m WHERE m.name OPERATOR(pg_catalog.=) $1",
                    &[name.into()],
                )
            })
            .unwrap_or_else(|e| report_sql(ERRCODE_INTERNAL_ERROR, &e.to_string(), None));
            Dropped::Done
        }
    }
}

/// Whether an unfinished job will create a model called `name`.
pub fn job_holds_name(name: &str) -> bool {
    as_owner(|| {
        one::<bool>(
            "SELECT EXISTS (SELECT FROM distill.job_registry j WHERE j.model OPERATOR(pg_catalog.=) $1 \
             AND j.status OPERATOR(pg_catalog.=) ANY ('{PENDING,IN_PROGRESS}'::pg_catalog.text[]))",
            &[name.into()],
        )
    })
    .unwrap_or(false)
}

/// Stores an adapter made elsewhere (an import) as a model owned by the caller; false if the name was
/// taken meanwhile.
pub fn insert_model(name: &str, base_model: &str, adapter: Vec<u8>, options: serde_json::Value) -> bool {
    let owner = caller().0;
    as_owner(|| {
        one::<bool>(
            "INSERT INTO distill.model_registry (name, base_model, owner, adapter, options, metrics) \
             VALUES ($1, $2, $3::pg_catalog.oid::pg_catalog.regrole, $4, $5, '{}') \
             ON CONFLICT (name) DO NOTHING RETURNING true",
            &[name.into(), base_model.into(), owner.into(), adapter.into(), JsonB(options).into()],
        )
    })
    .unwrap_or(false)
}
