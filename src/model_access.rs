//! Fine-tuned models as objects with an owner: `drop_model`, `grant_model`, `revoke_model` (the
//! last two for endpoints too).
//! A model is usable by its owner (and members of the owner role), by roles it was granted to (or
//! everyone, granted to PUBLIC), and by superusers; `complete()` checks this on every call.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::*;

use crate::errors::report_sql;
use crate::registry;

/// `distill.drop_model(name)`: deletes a fine-tuned model (its owner or a superuser).
#[pg_extern(volatile, parallel_unsafe)]
fn drop_model(name: &str) {
    crate::errors::refuse_on_standby("drop_model()");
    match registry::drop_model(name) {
        registry::Dropped::Done => crate::model_cache::forget_adapter(name),
        registry::Dropped::NotFound => no_such_model(name),
        registry::Dropped::NotOwner => not_owner(name, "drop it"),
    }
}

/// `distill.grant_model(name, role)`: lets `role` (or `public`) use the model in `complete()`.
#[pg_extern(volatile, parallel_unsafe)]
fn grant_model(name: &str, role: &str) {
    crate::errors::refuse_on_standby("grant_model()");
    let grantee = resolve_role(role);
    if is_endpoint(name) {
        check_endpoint_owner(name, "grant it");
        return crate::endpoint_registry::set_grant(name, grantee, true);
    }
    check_owner(name, "grant it");
    registry::set_grant(name, grantee, true);
}

/// `distill.revoke_model(name, role)`: undoes a `grant_model`.
#[pg_extern(volatile, parallel_unsafe)]
fn revoke_model(name: &str, role: &str) {
    crate::errors::refuse_on_standby("revoke_model()");
    let grantee = resolve_role(role);
    if is_endpoint(name) {
        check_endpoint_owner(name, "revoke it");
        return crate::endpoint_registry::set_grant(name, grantee, false);
    }
    check_owner(name, "revoke it");
    registry::set_grant(name, grantee, false);
}

/// `name` is an endpoint rather than a tuned model (names are unique across both).
fn is_endpoint(name: &str) -> bool {
    registry::owns_model(name).is_none() && crate::endpoint_registry::exists(name)
}

fn check_endpoint_owner(name: &str, what: &str) {
    if crate::endpoint_registry::owns(name) != Some(true) {
        report_sql(ERRCODE_INSUFFICIENT_PRIVILEGE, &format!("must be the owner of endpoint \"{name}\" to {what}"), None)
    }
}

/// The caller owns model `name` (or is a superuser); otherwise an ERROR saying it does not exist
/// or that only its owner may `what`.
pub fn check_owner(name: &str, what: &str) {
    match registry::owns_model(name) {
        None => no_such_model(name),
        Some(false) => not_owner(name, what),
        Some(true) => {}
    }
}

/// A role by its exact name, or 0 for PUBLIC. Only `public` as GRANT spells the keyword (lower
/// case) means PUBLIC: a role may be called "Public" or "PUBLIC", and a grant to it must not reach
/// every role. (No role can be called "public": PostgreSQL reserves the name.)
fn resolve_role(role: &str) -> pg_sys::Oid {
    if role == "public" {
        return pg_sys::Oid::INVALID;
    }
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) $1",
        &[role.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| report_sql(ERRCODE_UNDEFINED_OBJECT, &format!("role \"{role}\" does not exist"), None))
}

fn no_such_model(name: &str) -> ! {
    report_sql(
        ERRCODE_UNDEFINED_OBJECT,
        &format!("fine-tuned model \"{name}\" does not exist"),
        Some("SELECT name FROM distill.models lists the ones you can use."),
    )
}

fn not_owner(name: &str, what: &str) -> ! {
    report_sql(ERRCODE_INSUFFICIENT_PRIVILEGE, &format!("must be the owner of model \"{name}\" to {what}"), None)
}
