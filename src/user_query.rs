//! The caller's training and validation queries: checked at CREATE in the caller's session, read by
//! the worker as the job's owner.
//!
//! A query is prepared, never pasted into other SQL: it must be exactly one plain SELECT (no
//! data-modifying CTE, no FOR UPDATE, no SELECT INTO) with text-typed columns `prompt` and
//! `completion`. Other columns are ignored.

use std::ffi::{CStr, CString};

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::*;
use pgrx::{pg_sys, PgTupleDesc};

use crate::errors::report_sql;
use crate::guc;

/// Which query a message is about ("training_sql" or "validation_sql").
pub type Label = &'static str;

/// 1-based column numbers of `prompt` and `completion` in the query's result.
#[derive(Debug, Clone, Copy)]
struct Columns {
    prompt: i32,
    completion: i32,
}

/// Rows as read for training, and what was left out.
#[derive(Debug, Default)]
pub struct Rows {
    pub examples: Vec<distill_engine::Example>,
    /// Rows whose prompt or completion was NULL or blank.
    pub skipped: usize,
}

/// How many rows and bytes of text a read may still return; the setting named is the one to raise.
#[derive(Debug, Clone)]
pub struct Budget {
    pub rows: usize,
    pub rows_setting: &'static str,
    pub bytes: usize,
    pub bytes_setting: &'static str,
}

impl Budget {
    /// What one job's (or one evaluate() call's) queries may return together: the rows are all held
    /// in memory at once, so their text alone must fit the training memory limit.
    pub fn training() -> Self {
        Budget {
            rows: guc::max_training_rows(),
            rows_setting: "distill.max_training_rows",
            bytes: guc::max_training_memory_bytes() as usize,
            bytes_setting: "distill.max_training_memory",
        }
    }
}

/// Checks that `sql` is one SELECT with usable columns and that the current role may run it (the
/// executor's permission checks run when a cursor opens; no row is fetched).
pub fn check(label: Label, sql: &str) {
    // SAFETY: SPI calls on the main thread inside Spi::connect; the portal is closed before returning.
    Spi::connect(|_| unsafe {
        let (plan, _) = prepare(label, sql);
        let portal = pg_sys::SPI_cursor_open(std::ptr::null(), plan, std::ptr::null_mut(), std::ptr::null(), true);
        pg_sys::SPI_cursor_close(portal);
    })
}

/// Runs `sql` as the current role and returns its (prompt, completion) rows. NULL or blank values
/// skip the row (counted). Past the budget's rows or bytes (skipped rows count too) the read stops
/// with an ERROR naming the setting, before the rest is fetched.
pub fn read(label: Label, sql: &str, budget: &mut Budget) -> Rows {
    // SAFETY: SPI calls on the main thread inside Spi::connect; each fetched tuple table is freed
    // after its rows are copied out, and the portal is closed before returning.
    Spi::connect(|_| unsafe {
        let (plan, cols) = prepare(label, sql);
        let portal = pg_sys::SPI_cursor_open(std::ptr::null(), plan, std::ptr::null_mut(), std::ptr::null(), true);
        let mut rows = Rows::default();
        loop {
            pgrx::check_for_interrupts!();
            pg_sys::SPI_cursor_fetch(portal, true, 1000);
            let table = pg_sys::SPI_tuptable;
            let n = pg_sys::SPI_processed as usize;
            if table.is_null() || n == 0 {
                break;
            }
            for i in 0..n {
                if budget.rows == 0 {
                    report_sql(
                        ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                        &format!("{label} returned more rows than {} allows", budget.rows_setting),
                        Some("Add a LIMIT to the query, or ask an administrator to raise the setting."),
                    );
                }
                budget.rows -= 1;
                let tuple = *(*table).vals.add(i);
                let prompt = text_value(tuple, (*table).tupdesc, cols.prompt);
                let completion = text_value(tuple, (*table).tupdesc, cols.completion);
                let bytes = prompt.as_ref().map_or(0, String::len) + completion.as_ref().map_or(0, String::len);
                if bytes > budget.bytes {
                    report_sql(
                        ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                        &format!("{label} returned more text than {} allows", budget.bytes_setting),
                        Some("Select fewer or shorter rows, or ask an administrator to raise the setting."),
                    );
                }
                budget.bytes -= bytes;
                match (prompt, completion) {
                    (Some(p), Some(c)) if !p.trim().is_empty() && !c.trim().is_empty() => {
                        rows.examples.push(distill_engine::Example { prompt: p, completion: c })
                    }
                    _ => rows.skipped += 1,
                }
            }
            pg_sys::SPI_freetuptable(table);
        }
        pg_sys::SPI_cursor_close(portal);
        rows
    })
}

/// The text in column `col` of `tuple`.
///
/// # Safety
/// `tuple` and `desc` come from the current SPI tuple table and `col` is a text-typed column of it.
unsafe fn text_value(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc, col: i32) -> Option<String> {
    let mut isnull = false;
    let datum = pg_sys::SPI_getbinval(tuple, desc, col, &mut isnull);
    if isnull {
        return None;
    }
    let c = pg_sys::text_to_cstring(datum.cast_mut_ptr());
    let s = CStr::from_ptr(c).to_string_lossy().into_owned();
    pg_sys::pfree(c.cast());
    Some(s)
}

/// Prepares `sql` after checking it is one plain SELECT with usable columns, no longer than
/// `distill.max_query_bytes`.
///
/// # Safety
/// Called inside `Spi::connect` on the main thread; the plan lives until SPI_finish.
unsafe fn prepare(label: Label, sql: &str) -> (pg_sys::SPIPlanPtr, Columns) {
    let limit = guc::max_query_bytes();
    if sql.len() > limit {
        report_sql(
            ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            &format!("{label} is {} bytes long, more than distill.max_query_bytes ({limit})", sql.len()),
            Some("Put the logic in a view and select from it."),
        );
    }
    let not_select = |what: &str| -> ! {
        report_sql(
            ERRCODE_WRONG_OBJECT_TYPE,
            &format!("{label} must be a single SELECT statement: {what}"),
            Some("Write a query such as: SELECT question AS prompt, answer AS completion FROM my_table"),
        )
    };
    if sql.trim().is_empty() {
        not_select("it is empty");
    }
    let c = CString::new(sql).unwrap_or_else(|_| not_select("it contains a NUL byte"));
    let plan = pg_sys::SPI_prepare(c.as_ptr(), 0, std::ptr::null_mut());
    if plan.is_null() {
        let code = pg_sys::SPI_result;
        report_sql(ERRCODE_SYNTAX_ERROR, &format!("{label} could not be prepared (SPI code {code})"), None);
    }
    let sources = pg_sys::SPI_plan_get_plan_sources(plan);
    if pg_sys::list_length(sources) != 1 {
        not_select("it holds several statements");
    }
    let source = pg_sys::list_nth(sources, 0) as *mut pg_sys::CachedPlanSource;
    if (*source).commandTag != pg_sys::CommandTag::CMDTAG_SELECT || (*source).resultDesc.is_null() {
        not_select("it is not a SELECT");
    }
    let queries = (*source).query_list;
    for i in 0..pg_sys::list_length(queries) {
        let q = pg_sys::list_nth(queries, i) as *mut pg_sys::Query;
        if (*q).commandType != pg_sys::CmdType::CMD_SELECT || !(*q).utilityStmt.is_null() {
            not_select("it is not a plain SELECT");
        }
        if (*q).hasModifyingCTE {
            not_select("it modifies data (a WITH ... INSERT/UPDATE/DELETE)");
        }
        if !(*q).rowMarks.is_null() {
            not_select("it locks rows (FOR UPDATE/SHARE)");
        }
    }
    (plan, columns(label, (*source).resultDesc))
}

fn columns(label: Label, desc: pg_sys::TupleDesc) -> Columns {
    // SAFETY: `desc` is the prepared plan's result descriptor, valid until SPI_finish.
    let desc = unsafe { PgTupleDesc::from_pg_unchecked(desc) };
    let find = |name: &str| -> i32 {
        let found: Vec<(usize, pg_sys::Oid)> = desc
            .iter()
            .enumerate()
            .filter(|(_, a)| !a.is_dropped() && a.name() == name)
            .map(|(i, a)| (i, a.type_oid().value()))
            .collect();
        match found.as_slice() {
            [] => report_sql(
                ERRCODE_UNDEFINED_COLUMN,
                &format!("{label} has no column \"{name}\""),
                Some("Both queries must return columns named prompt and completion, e.g. SELECT request AS prompt, category AS completion FROM tickets"),
            ),
            [(i, ty)] => {
                // SAFETY: catalog lookups of a type oid taken from the descriptor; main thread, in a transaction.
                let base = unsafe { pg_sys::getBaseType(*ty) };
                if ![pg_sys::TEXTOID, pg_sys::VARCHAROID, pg_sys::BPCHAROID].contains(&base) {
                    // SAFETY: format_type_be returns a palloc'd C string for any type oid; main thread.
                    let ty_name = unsafe { CStr::from_ptr(pg_sys::format_type_be(*ty)).to_string_lossy().into_owned() };
                    report_sql(
                        ERRCODE_DATATYPE_MISMATCH,
                        &format!("{label} column \"{name}\" is of type {ty_name}, not text"),
                        Some(&format!("Cast it to text in the query, e.g. SELECT ...::text AS {name}")),
                    );
                }
                *i as i32 + 1
            }
            _ => report_sql(ERRCODE_AMBIGUOUS_COLUMN, &format!("{label} has more than one column \"{name}\""), None),
        }
    };
    Columns { prompt: find("prompt"), completion: find("completion") }
}
