//! The caller's training and validation queries: checked at CREATE in the caller's session, read by
//! the worker as the job's owner.
//!
//! A query is prepared, never pasted into other SQL: it must be exactly one plain SELECT (no
//! data-modifying CTE, no FOR UPDATE, no SELECT INTO) with text-typed columns `prompt` and
//! `completion`. Other columns are ignored.

use std::ffi::CString;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode::*;

use crate::errors::report_sql;
use crate::guc;
use crate::pg::spi_select::{base_type, type_name, Prepared, Shape};

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
    Spi::connect(|client| {
        let (plan, _) = prepare(client, label, sql);
        drop(plan.open());
    })
}

/// Runs `sql` as the current role and returns its (prompt, completion) rows. NULL or blank values
/// skip the row (counted). Past the budget's rows or bytes (skipped rows count too) the read stops
/// with an ERROR naming the setting, before the rest is fetched.
pub fn read(label: Label, sql: &str, budget: &mut Budget) -> Rows {
    Spi::connect(|client| {
        let (plan, cols) = prepare(client, label, sql);
        let mut cursor = plan.open();
        let mut rows = Rows::default();
        loop {
            pgrx::check_for_interrupts!();
            let Some(batch) = cursor.fetch(1000) else { break };
            for i in 0..batch.len() {
                let prompt = batch.text(i, cols.prompt);
                let completion = batch.text(i, cols.completion);
                let bytes = prompt.as_ref().map_or(0, String::len) + completion.as_ref().map_or(0, String::len);
                take(label, budget, bytes);
                match (prompt, completion) {
                    (Some(p), Some(c)) if !p.trim().is_empty() && !c.trim().is_empty() => {
                        rows.examples.push(distill_engine::Example { prompt: p, completion: c })
                    }
                    _ => rows.skipped += 1,
                }
            }
        }
        rows
    })
}

/// A row to run a model on: the query's `id` (as text) and `prompt`.
pub struct IdPrompt {
    pub id: Option<String>,
    pub prompt: Option<String>,
}

/// Runs `sql` as the current role and returns its (id, prompt) rows, NULLs included (the caller says
/// what a NULL prompt gives). The `id` column may be of any type; it comes back in its text form.
/// Past the budget's rows or bytes the read stops with an ERROR naming the setting.
pub fn read_id_prompt(label: Label, sql: &str, budget: &mut Budget) -> Vec<IdPrompt> {
    Spi::connect(|client| {
        let (plan, shape) = prepare_select(client, label, sql);
        let prompt = column(label, &shape, "prompt", true, "Return the rows' text as a column named prompt, e.g. SELECT ticket_id AS id, request AS prompt FROM tickets");
        let id = column(
            label,
            &shape,
            "id",
            false,
            "Return a key as a column named id, e.g. SELECT ticket_id AS id, request AS prompt FROM tickets",
        );
        let mut cursor = plan.open();
        let mut rows = Vec::new();
        loop {
            pgrx::check_for_interrupts!();
            let Some(batch) = cursor.fetch(1000) else { break };
            for i in 0..batch.len() {
                let row = IdPrompt { id: batch.display(i, id), prompt: batch.text(i, prompt) };
                let bytes = row.id.as_ref().map_or(0, String::len) + row.prompt.as_ref().map_or(0, String::len);
                take(label, budget, bytes);
                rows.push(row);
            }
        }
        rows
    })
}

/// Counts one row of `bytes` against `budget`; past it, an ERROR naming the setting to raise.
fn take(label: Label, budget: &mut Budget, bytes: usize) {
    if budget.rows == 0 {
        report_sql(
            ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            &format!("{label} returned more rows than {} allows", budget.rows_setting),
            Some("Add a LIMIT to the query (or run it in parts), or ask an administrator to raise the setting."),
        );
    }
    budget.rows -= 1;
    if bytes > budget.bytes {
        report_sql(
            ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            &format!("{label} returned more text than {} allows", budget.bytes_setting),
            Some("Select fewer or shorter rows, or ask an administrator to raise the setting."),
        );
    }
    budget.bytes -= bytes;
}

/// Prepares `sql` after checking it is no longer than `distill.max_query_bytes` and one plain SELECT
/// with usable columns.
fn prepare<'conn>(client: &SpiClient<'conn>, label: Label, sql: &str) -> (Prepared<'conn>, Columns) {
    let (plan, shape) = prepare_select(client, label, sql);
    let cols = columns(label, &shape);
    (plan, cols)
}

/// Prepares `sql` after checking it is no longer than `distill.max_query_bytes` and one plain SELECT.
fn prepare_select<'conn>(client: &SpiClient<'conn>, label: Label, sql: &str) -> (Prepared<'conn>, Shape) {
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
    let plan = Prepared::new(client, &c).unwrap_or_else(|code| {
        report_sql(ERRCODE_SYNTAX_ERROR, &format!("{label} could not be prepared (SPI code {code})"), None)
    });
    let shape = plan.shape();
    if shape.statements != 1 {
        not_select("it holds several statements");
    }
    if !shape.is_select {
        not_select("it is not a SELECT");
    }
    if !shape.plain {
        not_select("it is not a plain SELECT");
    }
    if shape.modifies_data {
        not_select("it modifies data (a WITH ... INSERT/UPDATE/DELETE)");
    }
    if shape.locks_rows {
        not_select("it locks rows (FOR UPDATE/SHARE)");
    }
    (plan, shape)
}

fn columns(label: Label, shape: &Shape) -> Columns {
    let hint = "Both queries must return columns named prompt and completion, e.g. SELECT request AS prompt, category AS completion FROM tickets";
    Columns {
        prompt: column(label, shape, "prompt", true, hint),
        completion: column(label, shape, "completion", true, hint),
    }
}

/// The 1-based number of the one column called `name` (of a text type when `text`).
fn column(label: Label, shape: &Shape, name: &str, text: bool, hint: &str) -> i32 {
    let found: Vec<&(String, pg_sys::Oid, i32)> = shape.columns.iter().filter(|(n, _, _)| n == name).collect();
    match found.as_slice() {
        [] => report_sql(ERRCODE_UNDEFINED_COLUMN, &format!("{label} has no column \"{name}\""), Some(hint)),
        [(_, ty, number)] => {
            if text && ![pg_sys::TEXTOID, pg_sys::VARCHAROID, pg_sys::BPCHAROID].contains(&base_type(*ty)) {
                report_sql(
                    ERRCODE_DATATYPE_MISMATCH,
                    &format!("{label} column \"{name}\" is of type {}, not text", type_name(*ty)),
                    Some(&format!("Cast it to text in the query, e.g. SELECT ...::text AS {name}")),
                );
            }
            *number
        }
        _ => report_sql(ERRCODE_AMBIGUOUS_COLUMN, &format!("{label} has more than one column \"{name}\""), None),
    }
}
