-- Structured outputs: with "response_format" every reply parses and validates, each schema feature
-- checked in SQL through jsonb casts (a reply that did not parse would fail the cast and this file);
-- extract() into composite types; the errors. Replies' exact text turns on knife-edge logits that CPU
-- kernels settle differently, so what is printed is validity, never the model's words.
\ir fixtures/ticket_classifier.psql
\set VERBOSITY default
SET distill.weight_format = 'q8_0';

CREATE TEMP TABLE asks (id int, request text);
INSERT INTO asks SELECT id::int, request FROM (VALUES
  ('1', 'Anna Berg, 34, has been a member since 2019. She was charged twice for roaming in Spain on 3 March 2024.'),
  ('2', 'My name is Omar Haddad and my internet is slow since the upgrade; I am 51 and not a member.'),
  ('3', 'Please close the account of Li Wei (age 28) by 2024-06-30; the final bill was 42.50 dollars.')) v(id, request);

-- Objects: required and optional properties, string maxLength, integer range, boolean, no extra keys.
CREATE TEMP TABLE r_object AS
SELECT id, distill.complete('smollm2-135m', 'Extract the person''s name, age and whether they are a member: ' || request,
  '{"max_tokens": 80, "response_format": {"type": "json", "schema": {"type": "object", "properties": {
     "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
     "member": {"type": "boolean"}, "note": {"type": "string", "maxLength": 30}},
     "required": ["name", "age", "member"], "additionalProperties": false}}}')::jsonb AS j
FROM asks;
SELECT count(*) AS replies,
       count(*) FILTER (WHERE jsonb_typeof(j->'name') = 'string' AND length(j->>'name') <= 40
                          AND (j->>'age')::int BETWEEN 0 AND 120 AND jsonb_typeof(j->'member') = 'boolean'
                          AND (j->'note' IS NULL OR length(j->>'note') <= 30)
                          AND (SELECT bool_and(k IN ('name', 'age', 'member', 'note')) FROM jsonb_object_keys(j) k)) AS valid
FROM r_object;

-- enum, const, a type list with null; greedy and sampled (three seeds).
CREATE TEMP TABLE r_enum AS
SELECT id, seed, distill.complete('smollm2-135m', 'What is this ticket about? ' || request,
  jsonb_build_object('temperature', CASE WHEN seed = 0 THEN 0 ELSE 1 END, 'seed', seed, 'max_tokens', 60,
    'response_format', '{"type": "json", "schema": {"type": "object", "properties": {
       "category": {"enum": ["billing", "roaming", "speed", "closing", "other"]}, "version": {"const": 2},
       "urgent": {"type": ["boolean", "null"]}}, "required": ["category", "version", "urgent"],
       "additionalProperties": false}}'::jsonb))::jsonb AS j
FROM asks, generate_series(0, 3) seed;
SELECT count(*) AS replies,
       count(*) FILTER (WHERE j->>'category' IN ('billing', 'roaming', 'speed', 'closing', 'other')
                          AND j->'version' = '2' AND jsonb_typeof(j->'urgent') IN ('boolean', 'null')) AS valid
FROM r_enum;

-- Formats and patterns: date and date-time parse as Postgres dates and timestamps.
CREATE TEMP TABLE r_dates AS
SELECT id, distill.complete('smollm2-135m', 'When did this happen, and a reference code for it? ' || request,
  '{"max_tokens": 80, "response_format": {"type": "json", "schema": {"type": "object", "properties": {
     "day": {"type": "string", "format": "date"}, "at": {"type": "string", "format": "date-time"},
     "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}}, "required": ["day", "at", "code"],
     "additionalProperties": false}}}')::jsonb AS j
FROM asks;
SELECT count(*) AS replies,
       count(*) FILTER (WHERE (j->>'day')::date IS NOT NULL AND (j->>'at')::timestamptz IS NOT NULL
                          AND j->>'code' ~ '^[A-Z]{3}-[0-9]{2}$') AS valid
FROM r_dates;

-- Arrays (items, minItems, maxItems) of numbers within a range.
CREATE TEMP TABLE r_arrays AS
SELECT id, distill.complete('smollm2-135m', 'List the amounts of money in: ' || request,
  '{"max_tokens": 60, "response_format": {"type": "json", "schema": {"type": "object", "properties": {
     "amounts": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1000}, "minItems": 1, "maxItems": 3}},
     "required": ["amounts"], "additionalProperties": false}}}')::jsonb AS j
FROM asks;
SELECT count(*) AS replies,
       count(*) FILTER (WHERE jsonb_array_length(j->'amounts') BETWEEN 1 AND 3
                          AND (SELECT bool_and(jsonb_typeof(a) = 'number' AND a::text::numeric BETWEEN 0 AND 1000)
                               FROM jsonb_array_elements(j->'amounts') a)) AS valid
FROM r_arrays;

-- Nested objects through $defs/$ref, anyOf; on the tuned model too (its label set does not apply
-- when a response_format asks for a shape).
CREATE TEMP TABLE r_nested AS
SELECT id, m, distill.complete(m, 'Summarise this ticket: ' || request,
  '{"max_tokens": 100, "response_format": {"type": "json", "schema": {
     "$defs": {"person": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                                            "age": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 120}, {"type": "null"}]}},
                          "required": ["name", "age"], "additionalProperties": false}},
     "type": "object", "properties": {"customer": {"$ref": "#/$defs/person"},
                                      "topic": {"anyOf": [{"enum": ["billing", "network"]}, {"type": "string", "maxLength": 20}]}},
     "required": ["customer", "topic"], "additionalProperties": false}}}')::jsonb AS j
FROM asks, (VALUES ('smollm2-135m'), ('ticket_classifier')) v(m);
SELECT m, count(*) AS replies,
       count(*) FILTER (WHERE jsonb_typeof(j->'customer'->'name') = 'string'
                          AND (j->'customer'->>'age' IS NULL OR (j->'customer'->>'age')::int BETWEEN 0 AND 120)
                          AND jsonb_typeof(j->'topic') = 'string' AND length(j->>'topic') <= 20) AS valid
FROM r_nested GROUP BY m ORDER BY m;

-- jsonb sorts a schema's keys (shortest first) and llguidance writes properties in the schema's
-- order: a schema given as a string keeps the order it was written in.
\set ordered '{"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}, "id": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["name", "id"], "additionalProperties": false}'
SELECT left(distill.complete('smollm2-135m', 'Give a name and an id as JSON.',
              jsonb_build_object('response_format', jsonb_build_object('type', 'json', 'schema', :'ordered'::jsonb))), 6) AS schema_as_jsonb,
       left(distill.complete('smollm2-135m', 'Give a name and an id as JSON.',
              jsonb_build_object('response_format', jsonb_build_object('type', 'json', 'schema', :'ordered'::text))), 8) AS schema_as_text;
SELECT distill.complete('smollm2-135m', 'Hello', '{"response_format": {"type": "json", "schema": "{not json"}}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- A regex, matched whole; and no schema at all: any JSON object.
SELECT count(*) FILTER (WHERE r ~ '^[A-Z]{3}-[0-9]{4}$') AS regex_matches, count(*) AS replies
FROM (SELECT distill.complete('smollm2-135m', 'Invent a ticket code for: ' || request,
        '{"response_format": {"type": "regex", "pattern": "[A-Z]{3}-[0-9]{4}"}}') AS r FROM asks) t;
SELECT jsonb_typeof(distill.complete('smollm2-135m', 'Say hello as JSON.', '{"response_format": {"type": "json"}}')::jsonb) AS no_schema;
-- The chat form and try_complete take it too.
SELECT jsonb_typeof((distill.complete('smollm2-135m', '[{"role": "user", "content": "Is the sky blue? Answer as JSON."}]'::jsonb,
         '{"response_format": {"type": "json", "schema": {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"], "additionalProperties": false}}}')
         ->'choices'->0->>'messages')::jsonb->'answer') AS chat_answer_type;

-- Errors, each naming its cause; try_complete gives NULL instead.
SELECT distill.complete('smollm2-135m', 'Hello', '{"response_format": {"type": "json", "schema": {"type": "array", "uniqueItems": true}}}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'Hello', '{"response_format": {"type": "xml"}}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'Hello', '{"response_format": {"type": "regex", "pattern": "[a-"}}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'Hello', jsonb_build_object('response_format', jsonb_build_object('type', 'regex', 'pattern', repeat('a', 70000))));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'Hello', '{"choices": ["a", "b"], "response_format": {"type": "json"}}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'Hello', '{"stop": ["}"], "response_format": {"type": "json"}}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('ticket_classifier', 'Hello', '{"scores": true, "response_format": {"type": "json"}}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'Describe the sea.', '{"max_tokens": 3, "response_format": {"type": "json", "schema": {"type": "object", "properties": {"text": {"type": "string", "minLength": 40}}, "required": ["text"]}}}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.try_complete('smollm2-135m', 'Describe the sea.', '{"max_tokens": 3, "response_format": {"type": "json", "schema": {"type": "object", "properties": {"text": {"type": "string", "minLength": 40}}, "required": ["text"]}}}') IS NULL AS try_gives_null;

-- extract(): typed columns from a composite type: an enum, a numeric with a range, a boolean, a date,
-- an array, a nested composite, a domain; COMMENTs on columns go into the base model's prompt.
CREATE TYPE ticket_topic AS ENUM ('billing', 'roaming', 'speed', 'closing', 'other');
CREATE DOMAIN age_years AS smallint CHECK (VALUE BETWEEN 0 AND 150);
CREATE TYPE person AS (name varchar(40), age age_years);
CREATE TYPE ticket_facts AS (topic ticket_topic, customer person, amount numeric(8,2), member boolean,
                             due date, keywords text[]);
COMMENT ON COLUMN ticket_facts.amount IS 'money the customer mentions, in dollars';
CREATE TEMP TABLE facts AS SELECT id, (distill.extract('smollm2-135m', request, NULL::ticket_facts, '{"max_tokens": 200, "max_items": 3}')).* FROM asks;
SELECT column_name, data_type, udt_name FROM information_schema.columns
WHERE table_name = 'facts' ORDER BY ordinal_position;
SELECT count(*) AS rows,
       count(*) FILTER (WHERE topic IS NULL OR topic::text IN ('billing', 'roaming', 'speed', 'closing', 'other')) AS topic_valid,
       count(*) FILTER (WHERE amount IS NULL OR abs(amount) < 1000000) AS amount_valid,
       count(*) FILTER (WHERE customer IS NULL OR (customer).age IS NULL OR (customer).age BETWEEN 0 AND 150) AS age_valid,
       count(*) FILTER (WHERE keywords IS NULL OR cardinality(keywords) <= 3) AS keywords_valid
FROM facts;
-- extract_json shows the JSON a row is filled from.
SELECT jsonb_typeof(distill.extract_json('smollm2-135m', 'Anna, 34, roaming charges', 'ticket_facts'::regtype, '{"max_items": 2}')) AS extract_json;
-- "nulls": false: every field gets a value.
SELECT (f).topic IS NOT NULL AND (f).member IS NOT NULL AND (f).due IS NOT NULL AS all_filled
FROM (SELECT distill.extract('smollm2-135m', 'Anna Berg, 34, was charged twice for roaming on 3 March 2024.',
                             NULL::ticket_facts, '{"nulls": false, "max_items": 2}') AS f) t;
-- NULL text gives NULL.
SELECT distill.extract('smollm2-135m', NULL, NULL::ticket_facts) IS NULL AS null_in_null_out;

-- Bad types and a reply the type refuses: clear errors; try_extract gives NULL.
SELECT distill.extract('smollm2-135m', 'Anna', NULL::integer);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
CREATE TYPE with_point AS (name text, location point);
SELECT distill.extract('smollm2-135m', 'Anna at (1,2)', NULL::with_point);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
CREATE DOMAIN impossible AS text CHECK (VALUE = 'no model writes this 7f3a');
CREATE TYPE refused AS (code impossible);
SELECT distill.extract('smollm2-135m', 'Anna', NULL::refused, '{"nulls": false}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.extract('smollm2-135m', 'Anna', NULL::ticket_facts, '{"choices": ["a"]}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.extract('smollm2-135m', 'Anna', NULL::ticket_facts, '{"max_items": 0}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.try_extract('smollm2-135m', 'Anna', NULL::refused, '{"nulls": false}') IS NULL AS refused_gives_null,
       distill.try_extract('smollm2-135m', 'Anna', NULL::with_point) IS NULL AS bad_type_gives_null;

-- The catalog reads behind extract() are schema-qualified: an "=" on oid that says false, ahead of
-- pg_catalog on the caller's path, changes nothing.
CREATE SCHEMA shadow;
CREATE FUNCTION shadow.never(oid, oid) RETURNS boolean LANGUAGE sql AS 'SELECT false';
CREATE OPERATOR shadow.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = shadow.never);
SET search_path = shadow, pg_catalog, public;
SELECT (distill.extract('smollm2-135m', 'Anna, 34', NULL::person, '{"nulls": false}')).age IS NOT NULL AS shadowed_path_still_works;
RESET search_path;

SELECT 1 AS server_alive;
