//! The endpoint tables (`distill.endpoint_registry`, `endpoint_keys`, `endpoint_grants`): every SQL
//! statement that reads or writes them, as their owner under the safe search_path (see
//! [`registry::as_owner`]), every name schema-qualified.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::*;
use pgrx::{pg_sys, JsonB};

use crate::errors::report_sql;
use crate::pg::spi_select::select_one;
use crate::registry::{as_owner, caller};

/// An endpoint's row, read for a call.
pub struct EndpointRow {
    pub base_url: String,
    pub model: String,
    /// Settings and where the key comes from (never the key).
    pub options: serde_json::Value,
    /// The stored key, when it was given inline.
    pub stored_key: Option<String>,
    /// The caller owns it (or belongs to its owner), is a superuser, or was granted it.
    pub usable: bool,
    /// The owner is a superuser: only then may `api_key_env`/`api_key_file` be read (see
    /// endpoints.rs).
    pub owner_is_superuser: bool,
}

fn failed(e: pgrx::spi::SpiError) -> ! {
    report_sql(ERRCODE_INTERNAL_ERROR, &e.to_string(), None)
}

pub fn find(name: &str) -> Option<EndpointRow> {
    let (caller, is_super) = caller();
    as_owner(|| {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT e.base_url, e.model, e.options,
                        (SELECT k.api_key FROM distill.endpoint_keys k WHERE k.endpoint OPERATOR(pg_catalog.=) e.name),
                        $3 OR pg_catalog.pg_has_role($2, e.owner::pg_catalog.oid, 'USAGE') OR EXISTS (
                            SELECT FROM distill.endpoint_grants g WHERE g.endpoint OPERATOR(pg_catalog.=) e.name
                            AND CASE WHEN g.grantee::pg_catalog.oid OPERATOR(pg_catalog.=) 0::pg_catalog.oid THEN true
                                     ELSE pg_catalog.pg_has_role($2, g.grantee::pg_catalog.oid, 'USAGE') END),
                        (SELECT r.rolsuper FROM pg_catalog.pg_roles r
                         WHERE r.oid OPERATOR(pg_catalog.=) e.owner::pg_catalog.oid)
                 FROM distill.endpoint_registry e WHERE e.name OPERATOR(pg_catalog.=) $1",
                None,
                &[name.into(), caller.into(), is_super.into()],
            )?;
            if t.is_empty() {
                return Ok::<_, pgrx::spi::SpiError>(None);
            }
            let r = t.first();
            Ok(Some(EndpointRow {
                base_url: r.get(1)?.unwrap_or_default(),
                model: r.get(2)?.unwrap_or_default(),
                options: r.get::<JsonB>(3)?.map_or(serde_json::Value::Null, |j| j.0),
                stored_key: r.get(4)?,
                usable: r.get(5)?.unwrap_or(false),
                owner_is_superuser: r.get(6)?.unwrap_or(false),
            }))
        })
    })
    .unwrap_or_else(|e| failed(e))
}

pub fn exists(name: &str) -> bool {
    as_owner(|| {
        select_one::<bool>(
            "SELECT EXISTS (SELECT FROM distill.endpoint_registry e WHERE e.name OPERATOR(pg_catalog.=) $1)",
            &[name.into()],
        )
    })
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Whether the caller owns endpoint `name` (or is a superuser); None if there is no such endpoint.
pub fn owns(name: &str) -> Option<bool> {
    let (caller, is_super) = caller();
    as_owner(|| {
        select_one::<bool>(
            "SELECT $3 OR pg_catalog.pg_has_role($2, e.owner::pg_catalog.oid, 'USAGE') \
             FROM distill.endpoint_registry e WHERE e.name OPERATOR(pg_catalog.=) $1",
            &[name.into(), caller.into(), is_super.into()],
        )
    })
    .ok()
    .flatten()
}

/// Registers an endpoint owned by the caller; false if the name was taken meanwhile.
pub fn insert(name: &str, base_url: &str, model: &str, options: serde_json::Value, key: Option<&str>) -> bool {
    let owner = caller().0;
    as_owner(|| {
        let added = Spi::get_one_with_args::<bool>(
            "INSERT INTO distill.endpoint_registry (name, base_url, model, owner, options) \
             VALUES ($1, $2, $3, $4::pg_catalog.oid::pg_catalog.regrole, $5) \
             ON CONFLICT (name) DO NOTHING RETURNING true",
            &[name.into(), base_url.into(), model.into(), owner.into(), JsonB(options).into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        if added {
            set_key(name, key);
        }
        added
    })
}

/// How an update changes the stored key.
pub enum KeyChange<'a> {
    Keep,
    Set(&'a str),
    Clear,
}

pub fn update(name: &str, base_url: &str, model: &str, options: serde_json::Value, key: KeyChange) {
    as_owner(|| {
        Spi::run_with_args(
            "UPDATE distill.endpoint_registry e SET base_url = $2, model = $3, options = $4, \
             updated_on = pg_catalog.now() WHERE e.name OPERATOR(pg_catalog.=) $1",
            &[name.into(), base_url.into(), model.into(), JsonB(options).into()],
        )
        .unwrap_or_else(|e| failed(e));
        match key {
            KeyChange::Keep => {}
            KeyChange::Set(k) => set_key(name, Some(k)),
            KeyChange::Clear => set_key(name, None),
        }
    })
}

/// Stores (or deletes) the inline key; runs inside [`as_owner`].
fn set_key(name: &str, key: Option<&str>) {
    let r = match key {
        Some(k) => Spi::run_with_args(
            "INSERT INTO distill.endpoint_keys (endpoint, api_key) VALUES ($1, $2) \
             ON CONFLICT (endpoint) DO UPDATE SET api_key = EXCLUDED.api_key",
            &[name.into(), k.into()],
        ),
        None => Spi::run_with_args(
            "DELETE FROM distill.endpoint_keys k WHERE k.endpoint OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        ),
    };
    r.unwrap_or_else(|e| failed(e));
}

pub fn delete(name: &str) {
    as_owner(|| {
        Spi::run_with_args(
            "DELETE FROM distill.endpoint_registry e WHERE e.name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        )
    })
    .unwrap_or_else(|e| failed(e));
}

/// Lets `grantee` (0: PUBLIC) use endpoint `name`, or stops letting it; ownership is checked first.
pub fn set_grant(name: &str, grantee: pg_sys::Oid, grant: bool) {
    crate::registry::set_grant_in("distill.endpoint_grants", "endpoint", name, grantee, grant)
}
