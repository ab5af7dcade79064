//! A composite type as a JSON schema, for `extract()`: which SQL types map to what.
//!
//! | SQL | JSON schema |
//! |---|---|
//! | text, varchar(n), char(n), name, citext-like text domains | string (varchar(n)/char(n): maxLength n) |
//! | smallint, integer, bigint | integer within the type's range |
//! | numeric(p,s) | number with \|x\| < 10^(p-s); numeric, real, double precision: number |
//! | boolean | boolean |
//! | date, timestamp(tz), time | string, format date / date-time / a HH:MM[:SS] pattern |
//! | uuid | string, format uuid |
//! | json, jsonb | any JSON value |
//! | enum types | enum of the labels, in their sort order |
//! | arrays | array of the element type, at most `max_items` (default 10: a small model can list on) |
//! | nested composites | object (recursively, at most 4 levels) |
//! | domains | their base type; NOT NULL domains are not nullable |
//!
//! Every field is required, and nullable unless `nulls` is false or a NOT NULL domain says so: "the
//! text does not say" is an answer an extractor must be able to give. The catalog is read as the
//! caller (types are public catalog data), schema-qualified against the caller's search_path.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::{json, Map, Value};

use crate::errors::invalid;

/// Nested composites deeper than this are refused (a schema is also a prompt; and it bounds the walk).
const MAX_DEPTH: usize = 4;
/// Fields over all levels.
const MAX_FIELDS: usize = 100;

/// The schema of composite type `oid`, and one line per field for a prompt ("name: what it holds").
pub struct TypeSchema {
    pub schema: Value,
    pub fields: Vec<String>,
    pub type_name: String,
}

struct TypeRow {
    typtype: String,
    typcategory: String,
    elem: pg_sys::Oid,
    base: pg_sys::Oid,
    typmod: i32,
    not_null: bool,
    relid: pg_sys::Oid,
    name: String,
}

struct Walker<'a, 'conn> {
    client: &'a SpiClient<'conn>,
    nulls: bool,
    max_items: usize,
    fields: usize,
}

pub fn for_type(oid: pg_sys::Oid, nulls: bool, max_items: usize) -> TypeSchema {
    Spi::connect(|client| {
        let mut w = Walker { client, nulls, max_items, fields: 0 };
        let Some(t) = w.type_row(oid) else { invalid(format!("type {} does not exist", u32::from(oid))) };
        if t.typtype != "c" {
            invalid(format!(
                "extract() needs a composite type (CREATE TYPE ... AS (...), or a table's row type), not {}",
                t.name
            ));
        }
        let mut lines = Vec::new();
        let schema = w.object(&t, 0, &mut lines, "");
        TypeSchema { schema, fields: lines, type_name: t.name }
    })
}

impl Walker<'_, '_> {
    fn type_row(&self, oid: pg_sys::Oid) -> Option<TypeRow> {
        let t = self
            .client
            .select(
                "SELECT t.typtype::pg_catalog.text, t.typcategory::pg_catalog.text, t.typelem, t.typbasetype,
                        t.typtypmod, t.typnotnull, t.typrelid, pg_catalog.format_type(t.oid, NULL)
                 FROM pg_catalog.pg_type t WHERE t.oid OPERATOR(pg_catalog.=) $1",
                None,
                &[oid.into()],
            )
            .unwrap_or_else(|e| invalid(e.to_string()));
        if t.is_empty() {
            return None;
        }
        let r = t.first();
        let get_oid = |i| r.get::<pg_sys::Oid>(i).ok().flatten().unwrap_or(pg_sys::InvalidOid);
        Some(TypeRow {
            typtype: r.get::<String>(1).ok().flatten().unwrap_or_default(),
            typcategory: r.get::<String>(2).ok().flatten().unwrap_or_default(),
            elem: get_oid(3),
            base: get_oid(4),
            typmod: r.get::<i32>(5).ok().flatten().unwrap_or(-1),
            not_null: r.get::<bool>(6).ok().flatten().unwrap_or(false),
            relid: get_oid(7),
            name: r.get::<String>(8).ok().flatten().unwrap_or_default(),
        })
    }

    /// A composite's fields as an object schema; `lines` gets one prompt line per field.
    fn object(&mut self, t: &TypeRow, depth: usize, lines: &mut Vec<String>, indent: &str) -> Value {
        if depth >= MAX_DEPTH {
            invalid(format!("{} nests composite types more than {MAX_DEPTH} levels deep", t.name));
        }
        let attrs = self
            .client
            .select(
                "SELECT a.attname::pg_catalog.text, a.atttypid, a.atttypmod,
                        pg_catalog.col_description(a.attrelid, a.attnum::pg_catalog.int4)
                 FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0
                   AND NOT a.attisdropped
                 ORDER BY a.attnum",
                None,
                &[t.relid.into()],
            )
            .unwrap_or_else(|e| invalid(e.to_string()));
        let attrs: Vec<(String, pg_sys::Oid, i32, Option<String>)> = attrs
            .map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<pg_sys::Oid>(2).ok().flatten().unwrap_or(pg_sys::InvalidOid),
                    r.get::<i32>(3).ok().flatten().unwrap_or(-1),
                    r.get::<String>(4).ok().flatten(),
                )
            })
            .collect();
        if attrs.is_empty() {
            invalid(format!("type {} has no columns", t.name));
        }
        let mut properties = Map::new();
        for (name, oid, typmod, comment) in attrs {
            self.fields += 1;
            if self.fields > MAX_FIELDS {
                invalid(format!("{} has more than {MAX_FIELDS} fields (nested ones included)", t.name));
            }
            let mut sub = Vec::new();
            let (schema, what, nullable) = self.value(oid, typmod, depth, &mut sub, &format!("{indent}  "), &name);
            let mut line = format!("{indent}- {name}: {what}");
            if let Some(c) = comment.filter(|c| !c.trim().is_empty()) {
                line.push_str(&format!(" ({})", c.trim()));
            }
            lines.push(line);
            lines.extend(sub);
            let schema = if nullable && self.nulls { json!({"anyOf": [schema, {"type": "null"}]}) } else { schema };
            properties.insert(name, schema);
        }
        let required: Vec<&String> = properties.keys().collect();
        json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
    }

    /// One value's schema, its description for the prompt, and whether it may be null.
    fn value(
        &mut self,
        oid: pg_sys::Oid,
        typmod: i32,
        depth: usize,
        lines: &mut Vec<String>,
        indent: &str,
        column: &str,
    ) -> (Value, String, bool) {
        let Some(t) = self.type_row(oid) else { invalid(format!("column {column} has a type that no longer exists")) };
        match t.typtype.as_str() {
            "d" => {
                let (schema, what, _) = self.value(t.base, t.typmod, depth, lines, indent, column);
                (schema, what, !t.not_null)
            }
            "e" => {
                let labels = self
                    .client
                    .select(
                        "SELECT e.enumlabel::pg_catalog.text FROM pg_catalog.pg_enum e
                         WHERE e.enumtypid OPERATOR(pg_catalog.=) $1 ORDER BY e.enumsortorder",
                        None,
                        &[oid.into()],
                    )
                    .unwrap_or_else(|e| invalid(e.to_string()));
                let labels: Vec<String> = labels.filter_map(|r| r.get::<String>(1).ok().flatten()).collect();
                let what =
                    format!("one of {}", labels.iter().map(|l| format!("\"{l}\"")).collect::<Vec<_>>().join(", "));
                (json!({"enum": labels}), what, true)
            }
            "c" => {
                let schema = self.object(&t, depth + 1, lines, indent);
                (schema, "an object with these fields:".into(), true)
            }
            _ if t.typcategory == "A" && t.elem != pg_sys::InvalidOid => {
                let (items, what, _) = self.value(t.elem, typmod, depth, lines, indent, column);
                let schema = json!({"type": "array", "items": items, "maxItems": self.max_items});
                (schema, format!("a list of at most {}, each {what}", self.max_items), true)
            }
            _ => (scalar(u32::from(oid), typmod, column, &t.name), describe(u32::from(oid), &t.name), true),
        }
    }
}

/// Base types by OID (pg_type.dat's fixed OIDs).
fn scalar(oid: u32, typmod: i32, column: &str, type_name: &str) -> Value {
    let int = |bits: u32| {
        let max = if bits == 64 { i64::MAX } else { (1i64 << (bits - 1)) - 1 };
        json!({"type": "integer", "minimum": -max - 1, "maximum": max})
    };
    match oid {
        25 | 19 => json!({"type": "string"}),
        // varchar(n) and char(n): typmod is n + 4 (VARHDRSZ).
        1043 | 1042 if typmod > 4 => json!({"type": "string", "maxLength": typmod - 4}),
        1043 | 1042 => json!({"type": "string"}),
        21 => int(16),
        23 => int(32),
        20 => int(64),
        700 | 701 => json!({"type": "number"}),
        1700 if typmod >= 4 => {
            // numeric(p, s): typmod - 4 = p << 16 | s; |x| < 10^(p - s).
            let (p, s) = (((typmod - 4) >> 16) & 0xffff, (typmod - 4) & 0xffff);
            let bound = 10f64.powi(p - s);
            json!({"type": "number", "exclusiveMinimum": -bound, "exclusiveMaximum": bound})
        }
        1700 => json!({"type": "number"}),
        16 => json!({"type": "boolean"}),
        1082 => json!({"type": "string", "format": "date"}),
        1114 | 1184 => json!({"type": "string", "format": "date-time"}),
        1083 => json!({"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$"}),
        2950 => json!({"type": "string", "format": "uuid"}),
        114 | 3802 => json!({}),
        _ => invalid(format!(
            "column {column} has type {type_name}, which extract() cannot describe as JSON (supported: text, \
             varchar, char, integer types, numeric, real, double precision, boolean, date, timestamp, \
             timestamptz, time, uuid, json, jsonb, enums, arrays, composites and domains over these)"
        )),
    }
}

fn describe(oid: u32, type_name: &str) -> String {
    match oid {
        21 | 23 | 20 => "a whole number".into(),
        700 | 701 | 1700 => "a number".into(),
        16 => "true or false".into(),
        1082 => "a date, YYYY-MM-DD".into(),
        1114 | 1184 => "a date and time, YYYY-MM-DDTHH:MM:SSZ".into(),
        1083 => "a time, HH:MM".into(),
        114 | 3802 => "any JSON value".into(),
        1043 | 1042 => "a string".into(),
        2950 => "a UUID".into(),
        _ => format!("a string ({type_name})"),
    }
}
