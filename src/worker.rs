//! The background workers that run fine-tuning jobs, one job at a time each.
//!
//! A worker connects to `distill.database`, requeues jobs whose worker died, claims the oldest
//! PENDING job (FOR UPDATE SKIP LOCKED, so several workers never take the same one) and hands it to
//! [`crate::training_job`]. Every step that touches the database runs in its own short transaction
//! through [`transaction`], which turns an ERROR into a value instead of killing the worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::*;

use crate::errors::report_sql;
use crate::pg::transaction::transaction;
use crate::pg::{backend, interrupts};
use crate::{guc, training_job};

/// pg_stat_activity.backend_type of our workers.
pub const BACKEND_TYPE: &str = "pg_distill worker";

/// Set in the postmaster when the library is preloaded; backends inherit it (fork).
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Registers `distill.workers` workers; called from `_PG_init` while preloading.
pub fn register() {
    PRELOADED.store(true, Ordering::Relaxed);
    for i in 0..guc::workers() {
        BackgroundWorkerBuilder::new(&format!("pg_distill worker {i}"))
            .set_type(BACKEND_TYPE)
            .set_library("pg_distill")
            .set_function("distill_worker_main")
            .set_argument((i as i32).into_datum())
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            // A worker that exits with an error (or is terminated) is started again after this long.
            .set_restart_time(Some(Duration::from_secs(5)))
            .load();
    }
}

/// CREATE refuses jobs that no worker would ever run.
pub fn check_can_run_jobs() {
    if !PRELOADED.load(Ordering::Relaxed) || guc::workers() == 0 {
        report_sql(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "no pg_distill background worker is configured to run fine-tuning jobs",
            Some("Add pg_distill to shared_preload_libraries (and distill.workers >= 1) in postgresql.conf, then restart PostgreSQL."),
        );
    }
    let here = Spi::get_one::<String>("SELECT pg_catalog.current_database()::pg_catalog.text")
        .ok()
        .flatten()
        .unwrap_or_default();
    let jobs_db = guc::database();
    if here != jobs_db {
        report_sql(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            &format!("fine-tuning jobs run in database \"{jobs_db}\", not in \"{here}\""),
            Some("Connect to that database, or set distill.database in postgresql.conf and restart PostgreSQL."),
        );
    }
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn distill_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&guc::database()), None);
    distill_engine::threads::init_global_pool(1);
    let mut runner = training_job::Runner::new();
    while !backend::shutdown_requested() {
        if BackgroundWorker::sighup_received() {
            backend::reload_config();
        }
        // A hot standby trains nothing (its registry is the primary's, read-only); after a promotion
        // this worker starts claiming jobs.
        if backend::hot_standby() {
            interrupts::wait_latch(Duration::from_secs(5));
            continue;
        }
        match transaction(claim_next_job) {
            Ok(Some(job)) => runner.run(job),
            Ok(None) => interrupts::wait_latch(Duration::from_secs(1)),
            Err(e) => {
                log!("pg_distill worker: {e}");
                interrupts::wait_latch(Duration::from_secs(5));
            }
        }
    }
    backend::exit_worker();
}

/// A claimed job: what the worker needs to run it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub model: String,
    pub base_model: String,
    pub owner: pg_sys::Oid,
    pub training_sql: String,
    pub validation_sql: Option<String>,
    pub options: serde_json::Value,
    pub search_path: String,
}

fn claim_next_job() -> Option<Job> {
    let installed =
        Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('distill.job_registry') IS NOT NULL").ok().flatten();
    if installed != Some(true) {
        return None;
    }
    // A job IN_PROGRESS without a live worker lost it (crash, kill -9, restart): run it again, up to
    // three starts in all; a job that keeps killing its worker ends in ERROR.
    Spi::run_with_args(
        "UPDATE distill.job_registry j SET
            status = CASE WHEN j.cancel_requested THEN 'CANCELLED'
                          WHEN j.attempts OPERATOR(pg_catalog.>=) 3 THEN 'ERROR' ELSE 'PENDING' END,
            error = CASE WHEN j.cancel_requested THEN NULL WHEN j.attempts OPERATOR(pg_catalog.>=) 3
                         THEN 'the training worker stopped during this job 3 times; giving up' END,
            finished_on = CASE WHEN j.cancel_requested OR j.attempts OPERATOR(pg_catalog.>=) 3 THEN pg_catalog.now() END,
            worker_pid = NULL, updated_on = pg_catalog.now()
         WHERE j.status OPERATOR(pg_catalog.=) 'IN_PROGRESS' AND NOT EXISTS (
            SELECT FROM pg_catalog.pg_stat_activity a WHERE a.pid OPERATOR(pg_catalog.=) j.worker_pid
            AND a.backend_type OPERATOR(pg_catalog.=) $1)",
        &[BACKEND_TYPE.into()],
    )
    .unwrap_or_else(|e| report_sql(ERRCODE_INTERNAL_ERROR, &e.to_string(), None));
    Spi::connect_mut(|c| {
        let rows = c
            .update(
                "UPDATE distill.job_registry j SET status = 'IN_PROGRESS', worker_pid = pg_catalog.pg_backend_pid(),
                        attempts = j.attempts OPERATOR(pg_catalog.+) 1, started_on = pg_catalog.now(),
                        updated_on = pg_catalog.now(), progress = 0, step = 0, trained_tokens = 0,
                        recent_losses = '[]', epochs = '[]', error = NULL
                 WHERE j.id OPERATOR(pg_catalog.=) (SELECT p.id FROM distill.job_registry p
                               WHERE p.status OPERATOR(pg_catalog.=) 'PENDING'
                               ORDER BY p.created_on, p.id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING j.id, j.model, j.base_model, j.owner::pg_catalog.oid, j.training_sql, j.validation_sql,
                           j.options, j.search_path",
                None,
                &[],
            )
            .ok()?;
        let row = rows.first();
        let id: String = row.get(1).ok()??;
        Some(Job {
            id,
            model: row.get(2).ok()??,
            base_model: row.get(3).ok()??,
            owner: row.get(4).ok()??,
            training_sql: row.get(5).ok()??,
            validation_sql: row.get(6).ok()?,
            options: row.get::<pgrx::JsonB>(7).ok()??.0,
            search_path: row.get(8).ok()??,
        })
    })
}
