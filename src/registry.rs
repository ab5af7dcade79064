//! The registry tables (`distill.job_registry`, `distill.model_registry`): every SQL statement that
//! reads or writes them.
//!
//! The tables are private. Functions reach them as the tables' owner ([`as_owner`]) after checking the
//! caller's rights themselves, like SECURITY DEFINER functions. Everything here runs as that owner
//! under `search_path = pg_catalog, pg_temp`, and every name is schema-qualified as well, operators
//! and types included (`OPERATOR(pg_catalog.=)`, `::pg_catalog.text`): a caller's search_path must
//! not be able to substitute a function or operator of its own.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};

use pgrx::PgSqlErrorCode::*;

use crate::errors::report_sql;
use crate::guc;
use crate::pg::elevated::Elevated;
use crate::pg::spi_select::select_one;

/// Runs `f` as the registry owner (see [`Elevated::registry_owner`]); the caller's identity, search_path
/// and any setting changed inside come back afterwards, on an ERROR too.
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    let _owner = Elevated::registry_owner();
    f()
}

/// The calling role and whether it is a superuser (read before any [`as_owner`]).
pub fn caller() -> (pg_sys::Oid, bool) {
    (crate::pg::backend::current_user(), crate::pg::backend::is_superuser())
}

/// The first column of the first row of a read, None when there is no row (or the value is NULL).
/// Read-only (see [`select_one`]): the read paths of `complete()` run on hot standbys too.
fn one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    select_one::<T>(sql, args).unwrap_or_else(|e| report_sql(ERRCODE_INTERNAL_ERROR, &e.to_string(), None))
}

/// [`one`] for a statement that writes (INSERT ... RETURNING).
fn one_mut<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
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

/// Unfinished states, as the partial unique index `job_registry_active_model` names them.
const UNFINISHED: &str = "'{PENDING,IN_PROGRESS}'::pg_catalog.text[]";

/// Queues a job; None when an unfinished job for the same model name exists (also under a race: the
/// partial unique index decides, ON CONFLICT turns the loser into None). Refused past the caller's
/// limits ([`check_job_counts`]).
pub fn insert_job(j: &NewJob) -> Option<String> {
    let is_super = caller().1;
    as_owner(|| {
        if !is_super {
            check_job_counts(j.owner);
        }
        one_mut::<String>(
            &format!(
                "INSERT INTO distill.job_registry (id, model, base_model, owner, training_sql, validation_sql, options, search_path) \
                 VALUES ('ft_' OPERATOR(pg_catalog.||) pg_catalog.gen_random_uuid()::pg_catalog.text, $1, $2, $3::pg_catalog.oid::pg_catalog.regrole, $4, $5, $6, $7) \
                 ON CONFLICT (model) WHERE status OPERATOR(pg_catalog.=) ANY ({UNFINISHED}) DO NOTHING RETURNING id"
            ),
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

/// Refuses a new job past the role's limits (superusers have none): unfinished jobs, job rows and
/// models, under a per-role lock so that racing CREATEs of one role cannot pass them together.
fn check_job_counts(role: pg_sys::Oid) {
    lock_role(role);
    let (unfinished, rows) = job_counts(role);
    refuse_at_limit(
        unfinished,
        guc::max_pending_jobs_per_role(),
        "distill.max_pending_jobs_per_role",
        &format!("you already have {unfinished} unfinished fine-tuning jobs"),
        "Wait for one to finish, or CANCEL one: SELECT distill.finetune('SHOW') lists them.",
    );
    refuse_at_limit(
        rows,
        guc::max_jobs_per_role(),
        "distill.max_jobs_per_role",
        &format!("you have {rows} fine-tuning jobs on record"),
        "Ask an administrator to delete old rows of distill.job_registry or to raise the limit.",
    );
    check_model_count(role);
}

/// A 53400 ERROR when a role already has `count` of something a setting limits to `limit`.
fn refuse_at_limit(count: i64, limit: i64, setting: &str, what: &str, hint: &str) {
    if count >= limit {
        report_sql(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED, &format!("{what} ({setting} = {limit})"), Some(hint));
    }
}

/// Serialises this transaction's limit checks with other transactions of the same role (released
/// at commit or abort). The key's high half marks pg_distill's locks.
fn lock_role(role: pg_sys::Oid) {
    let key = (0x7064_6973_i64 << 32) | role.to_u32() as i64;
    Spi::run_with_args("SELECT pg_catalog.pg_advisory_xact_lock($1::pg_catalog.int8)", &[key.into()])
        .unwrap_or_else(|e| report_sql(ERRCODE_INTERNAL_ERROR, &e.to_string(), None));
}

/// A role's unfinished jobs and all its job rows.
fn job_counts(role: pg_sys::Oid) -> (i64, i64) {
    let row = Spi::get_two_with_args::<i64, i64>(
        &format!(
            "SELECT pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) ANY ({UNFINISHED})), pg_catalog.count(*) \
             FROM distill.job_registry j WHERE j.owner::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid"
        ),
        &[role.into()],
    );
    match row {
        Ok((a, b)) => (a.unwrap_or(0), b.unwrap_or(0)),
        Err(e) => report_sql(ERRCODE_INTERNAL_ERROR, &e.to_string(), None),
    }
}

/// Refuses a new model (job or import) past `distill.max_models_per_role`, counting the role's
/// models and its unfinished jobs (each will make one).
fn check_model_count(role: pg_sys::Oid) {
    let n = one::<i64>(
        &format!(
            "SELECT (SELECT pg_catalog.count(*) FROM distill.model_registry m \
                     WHERE m.owner::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid) \
             OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM distill.job_registry j \
                     WHERE j.owner::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid \
                     AND j.status OPERATOR(pg_catalog.=) ANY ({UNFINISHED}))"
        ),
        &[role.into()],
    )
    .unwrap_or(0);
    refuse_at_limit(
        n,
        guc::max_models_per_role(),
        "distill.max_models_per_role",
        &format!("you already own {n} models and unfinished jobs"),
        "Drop a model you no longer need: SELECT distill.drop_model(name).",
    );
}

/// A job's row as JSON, if it exists and the caller may see it.
pub fn job_row(id: &str) -> Option<serde_json::Value> {
    let (caller, is_super) = caller();
    as_owner(|| {
        one::<JsonB>(
            "SELECT pg_catalog.to_jsonb(j) OPERATOR(pg_catalog.||) \
                    pg_catalog.jsonb_build_object('owner', j.owner::pg_catalog.text) \
             FROM distill.job_registry j WHERE j.id OPERATOR(pg_catalog.=) $1 \
             AND ($3 OR pg_catalog.pg_has_role($2, j.owner::pg_catalog.oid, 'USAGE'))",
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
             FROM distill.job_registry j WHERE $2 OR pg_catalog.pg_has_role($1, j.owner::pg_catalog.oid, 'USAGE')",
            &[caller.into(), is_super.into()],
        )
    });
    match all {
        Some(JsonB(serde_json::Value::Array(rows))) => rows,
        _ => Vec::new(),
    }
}

/// What the worker shows in pg_stat_activity.query while it runs a job's queries: how CANCEL finds
/// a worker to interrupt (the training that follows stops through the job row instead).
pub fn reading_activity(job_id: &str) -> String {
    format!("reading rows of job {job_id}")
}

/// Asks an unfinished job to stop: a PENDING job is CANCELLED at once, an IN_PROGRESS one is flagged
/// for its worker (which stops within one training step), and a worker still running the job's query
/// gets a query cancel (its abort then sees the flag once this transaction commits). Returns whether
/// a job was changed.
pub fn cancel_job(id: &str) -> bool {
    let (caller, is_super) = caller();
    as_owner(|| {
        let pid = Spi::get_two_with_args::<bool, i32>(
            &format!(
                "UPDATE distill.job_registry j SET \
                    status = CASE WHEN j.status OPERATOR(pg_catalog.=) 'PENDING' THEN 'CANCELLED' ELSE j.status END, \
                    finished_on = CASE WHEN j.status OPERATOR(pg_catalog.=) 'PENDING' THEN pg_catalog.now() END, \
                    cancel_requested = true \
                 WHERE j.id OPERATOR(pg_catalog.=) $1 AND j.status OPERATOR(pg_catalog.=) ANY ({UNFINISHED}) \
                   AND ($3 OR pg_catalog.pg_has_role($2, j.owner::pg_catalog.oid, 'USAGE')) \
                 RETURNING true, j.worker_pid"
            ),
            &[id.into(), caller.into(), is_super.into()],
        );
        let (changed, pid) = match pid {
            Ok((changed, pid)) => (changed.unwrap_or(false), pid),
            Err(pgrx::spi::SpiError::InvalidPosition) => (false, None),
            Err(e) => report_sql(ERRCODE_INTERNAL_ERROR, &e.to_string(), None),
        };
        if let Some(pid) = pid {
            Spi::run_with_args(
                "SELECT pg_catalog.pg_cancel_backend(a.pid) FROM pg_catalog.pg_stat_activity a \
                 WHERE a.pid OPERATOR(pg_catalog.=) $1 AND a.backend_type OPERATOR(pg_catalog.=) $2 \
                   AND a.query OPERATOR(pg_catalog.=) $3",
                &[pid.into(), crate::worker::BACKEND_TYPE.into(), reading_activity(id).as_str().into()],
            )
            .unwrap_or_else(|e| report_sql(ERRCODE_INTERNAL_ERROR, &e.to_string(), None));
        }
        changed
    })
}

// ---- models -----------------------------------------------------------------------------------

/// A fine-tuned model as the registry knows it, and whether the caller may use it.
#[derive(Debug, Clone, PartialEq)]
pub struct TunedModel {
    pub version: i64,
    pub base_model: String,
    /// The caller owns it (or belongs to its owner), is a superuser, or was granted it.
    pub usable: bool,
    /// Its training completions' label set, when they formed one.
    pub labels: Option<Vec<String>>,
}

pub fn find_model(name: &str) -> Option<TunedModel> {
    let (caller, is_super) = caller();
    let row = as_owner(|| {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT m.version, m.base_model,
                        $3 OR pg_catalog.pg_has_role($2, m.owner::pg_catalog.oid, 'USAGE') OR EXISTS (
                            SELECT FROM distill.model_grants g WHERE g.model OPERATOR(pg_catalog.=) m.name
                            AND CASE WHEN g.grantee::pg_catalog.oid OPERATOR(pg_catalog.=) 0::pg_catalog.oid THEN true
                                     ELSE pg_catalog.pg_has_role($2, g.grantee::pg_catalog.oid, 'USAGE') END),
                        m.metrics OPERATOR(pg_catalog.->) 'labels'
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
                usable: r.get(3)?.unwrap_or(false),
                labels: r.get::<pgrx::JsonB>(4)?.and_then(|j| serde_json::from_value(j.0).ok()),
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

/// A tuned model or an endpoint has this name.
pub fn model_taken(name: &str) -> bool {
    as_owner(|| {
        one::<bool>(
            "SELECT EXISTS (SELECT FROM distill.model_registry m WHERE m.name OPERATOR(pg_catalog.=) $1) \
                 OR EXISTS (SELECT FROM distill.endpoint_registry e WHERE e.name OPERATOR(pg_catalog.=) $1)",
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
            "SELECT $3 OR pg_catalog.pg_has_role($2, m.owner::pg_catalog.oid, 'USAGE') FROM distill.model_registry m \
             WHERE m.name OPERATOR(pg_catalog.=) $1",
            &[name.into(), caller.into(), is_super.into()],
        )
    })
}

/// Lets `grantee` (0: PUBLIC) use model `name`, or stops letting it. The caller's ownership is checked first.
pub fn set_grant(name: &str, grantee: pg_sys::Oid, grant: bool) {
    set_grant_in("distill.model_grants", "model", name, grantee, grant)
}

/// [`set_grant`] on a grants table (`distill.model_grants`, `distill.endpoint_grants`) whose
/// `column` names the object; both names are the callers' constants, never user input.
pub fn set_grant_in(table: &str, column: &str, name: &str, grantee: pg_sys::Oid, grant: bool) {
    let sql = if grant {
        format!(
            "INSERT INTO {table} ({column}, grantee) \
             VALUES ($1, $2::pg_catalog.oid::pg_catalog.regrole) ON CONFLICT DO NOTHING"
        )
    } else {
        format!(
            "DELETE FROM {table} g WHERE g.{column} OPERATOR(pg_catalog.=) $1 \
             AND g.grantee::pg_catalog.oid OPERATOR(pg_catalog.=) $2::pg_catalog.oid"
        )
    };
    // As int8: pgrx sends the invalid oid 0 (PUBLIC) as NULL.
    as_owner(|| Spi::run_with_args(&sql, &[name.into(), (grantee.to_u32() as i64).into()]))
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
/// taken meanwhile. Refused past `distill.max_models_per_role` (superusers have no such limit).
pub fn insert_model(name: &str, base_model: &str, adapter: Vec<u8>, options: serde_json::Value) -> bool {
    let (owner, is_super) = caller();
    as_owner(|| {
        if !is_super {
            lock_role(owner);
            check_model_count(owner);
        }
        one_mut::<bool>(
            "INSERT INTO distill.model_registry (name, base_model, owner, adapter, options, metrics) \
             VALUES ($1, $2, $3::pg_catalog.oid::pg_catalog.regrole, $4, $5, '{}') \
             ON CONFLICT (name) DO NOTHING RETURNING true",
            &[name.into(), base_model.into(), owner.into(), adapter.into(), JsonB(options).into()],
        )
    })
    .unwrap_or(false)
}
