//! A caller's SELECT through SPI, its raw calls in one place: prepared once, its shape read from the
//! plan (for `user_query.rs`'s checks), read through a cursor in batches of rows.
//!
//! Everything here lives inside one `Spi::connect` (SPI_finish frees plans, portals and tuple tables),
//! which the `'conn` lifetime of [`Prepared::new`]'s `&SpiClient` carries through. On an ERROR the
//! transaction's abort frees what is open, so the drops below do nothing while a panic unwinds.

use std::ffi::CStr;
use std::marker::PhantomData;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgTupleDesc;

/// A prepared statement, valid for the `Spi::connect` of `'conn`.
pub struct Prepared<'conn> {
    plan: pg_sys::SPIPlanPtr,
    _conn: PhantomData<&'conn ()>,
}

/// What a plan says about its statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// Statements in the text (`SELECT 1; SELECT 2` has two).
    pub statements: usize,
    /// The first statement is a SELECT that returns rows.
    pub is_select: bool,
    /// Every query of it is a plain SELECT (no utility statement, no SELECT INTO).
    pub plain: bool,
    /// A data-modifying CTE (WITH ... INSERT/UPDATE/DELETE).
    pub modifies_data: bool,
    /// FOR UPDATE/SHARE.
    pub locks_rows: bool,
    /// The result's columns (dropped ones left out): name, type oid and 1-based number.
    pub columns: Vec<(String, pg_sys::Oid, i32)>,
}

impl<'conn> Prepared<'conn> {
    /// Prepares `sql` (no parameters); Err(SPI_result) when SPI returns no plan.
    pub fn new(_client: &SpiClient<'conn>, sql: &CStr) -> Result<Self, i32> {
        // SAFETY: inside Spi::connect (the client proves it); the string is NUL-terminated.
        let plan = unsafe { pg_sys::SPI_prepare(sql.as_ptr(), 0, std::ptr::null_mut()) };
        if plan.is_null() {
            // SAFETY: a read of SPI's result code, set by the call above.
            return Err(unsafe { pg_sys::SPI_result });
        }
        Ok(Self { plan, _conn: PhantomData })
    }

    /// The statement's shape, from its cached plan source.
    pub fn shape(&self) -> Shape {
        // SAFETY: the plan is valid (see `new`); its plan-source list, queries and result descriptor
        // belong to it and are only read here.
        unsafe {
            let sources = pg_sys::SPI_plan_get_plan_sources(self.plan);
            let statements = pg_sys::list_length(sources) as usize;
            let mut shape = Shape {
                statements,
                is_select: false,
                plain: true,
                modifies_data: false,
                locks_rows: false,
                columns: vec![],
            };
            if statements == 0 {
                return shape;
            }
            let source = pg_sys::list_nth(sources, 0) as *mut pg_sys::CachedPlanSource;
            shape.is_select =
                (*source).commandTag == pg_sys::CommandTag::CMDTAG_SELECT && !(*source).resultDesc.is_null();
            let queries = (*source).query_list;
            for i in 0..pg_sys::list_length(queries) {
                let q = pg_sys::list_nth(queries, i) as *mut pg_sys::Query;
                shape.plain &= (*q).commandType == pg_sys::CmdType::CMD_SELECT && (*q).utilityStmt.is_null();
                shape.modifies_data |= (*q).hasModifyingCTE;
                shape.locks_rows |= !(*q).rowMarks.is_null();
            }
            if !(*source).resultDesc.is_null() {
                let desc = PgTupleDesc::from_pg_unchecked((*source).resultDesc);
                shape.columns = desc
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| !a.is_dropped())
                    .map(|(i, a)| (a.name().to_string(), a.type_oid().value(), i as i32 + 1))
                    .collect();
            }
            shape
        }
    }

    /// A read-only cursor over the statement's rows. Opening it runs the executor's permission checks.
    pub fn open(&self) -> Cursor<'_> {
        // SAFETY: the plan is valid; no parameters; read-only. The portal is closed on drop.
        let portal = unsafe {
            pg_sys::SPI_cursor_open(std::ptr::null(), self.plan, std::ptr::null_mut(), std::ptr::null(), true)
        };
        Cursor { portal, _plan: PhantomData }
    }
}

/// An open cursor; closed when dropped.
pub struct Cursor<'p> {
    portal: pg_sys::Portal,
    _plan: PhantomData<&'p ()>,
}

impl Cursor<'_> {
    /// The next `n` rows at most; None once there are no more.
    pub fn fetch(&mut self, n: i64) -> Option<Batch<'_>> {
        // SAFETY: the portal is open (see `open`); SPI_tuptable and SPI_processed describe this fetch.
        let (table, len) = unsafe {
            pg_sys::SPI_cursor_fetch(self.portal, true, n as _);
            (pg_sys::SPI_tuptable, pg_sys::SPI_processed as usize)
        };
        if table.is_null() {
            return None;
        }
        let batch = Batch { table, len, _cursor: PhantomData };
        (len > 0).then_some(batch)
    }
}

impl Drop for Cursor<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // SAFETY: the portal is open and no batch of it outlives this cursor.
            unsafe { pg_sys::SPI_cursor_close(self.portal) };
        }
    }
}

/// Rows of one fetch; freed when dropped.
pub struct Batch<'c> {
    table: *mut pg_sys::SPITupleTable,
    len: usize,
    _cursor: PhantomData<&'c ()>,
}

impl Batch<'_> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Column `col` (1-based) of row `row` as text; None for NULL. The column must be of a text type
    /// (text, varchar, char: what `user_query.rs` checks before it reads).
    pub fn text(&self, row: usize, col: i32) -> Option<String> {
        assert!(row < self.len, "row {row} of a batch of {}", self.len);
        // SAFETY: row < len rows of this tuple table; the column's type was checked to be textual, so
        // its datum is a varlena text_to_cstring reads; the C string is copied, then freed.
        unsafe {
            let tuple = *(*self.table).vals.add(row);
            let mut isnull = false;
            let datum = pg_sys::SPI_getbinval(tuple, (*self.table).tupdesc, col, &mut isnull);
            if isnull {
                return None;
            }
            let c = pg_sys::text_to_cstring(datum.cast_mut_ptr());
            let s = CStr::from_ptr(c).to_string_lossy().into_owned();
            pg_sys::pfree(c.cast());
            Some(s)
        }
    }
}

impl Batch<'_> {
    /// Column `col` (1-based) of row `row` in its type's text form (its output function); None for NULL.
    pub fn display(&self, row: usize, col: i32) -> Option<String> {
        assert!(row < self.len, "row {row} of a batch of {}", self.len);
        // SAFETY: row < len rows of this tuple table; SPI_getvalue runs the column type's output
        // function and returns a palloc'd C string (NULL for a NULL value), copied, then freed.
        unsafe {
            let tuple = *(*self.table).vals.add(row);
            let c = pg_sys::SPI_getvalue(tuple, (*self.table).tupdesc, col);
            if c.is_null() {
                return None;
            }
            let s = CStr::from_ptr(c).to_string_lossy().into_owned();
            pg_sys::pfree(c.cast());
            Some(s)
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // SAFETY: the table came from this batch's fetch and is freed once.
            unsafe { pg_sys::SPI_freetuptable(self.table) };
        }
    }
}

/// The base type of a domain (the type itself otherwise).
pub fn base_type(ty: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: a catalog lookup of a type oid; main thread, in a transaction.
    unsafe { pg_sys::getBaseType(ty) }
}

/// A type's name as SQL writes it.
pub fn type_name(ty: pg_sys::Oid) -> String {
    // SAFETY: format_type_be returns a palloc'd C string for any type oid; main thread.
    unsafe { CStr::from_ptr(pg_sys::format_type_be(ty)).to_string_lossy().into_owned() }
}

/// The first column of the first row of a read-only statement, None when there is no row or it is
/// NULL. Unlike pgrx's `Spi::get_one*`, which run everything as a write and so take a transaction id
/// (an xid burnt per call on a primary; an ERROR, "cannot assign TransactionIds during recovery", on
/// a hot standby), this runs read-only unless the transaction has written already.
pub fn select_one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> pgrx::spi::Result<Option<T>> {
    Spi::connect(|c| match c.select(sql, Some(1), args)?.first().get_one::<T>() {
        Err(pgrx::spi::SpiError::InvalidPosition) => Ok(None),
        r => r,
    })
}
