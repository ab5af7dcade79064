-- PEFT interop: export_adapter() gives a zip of adapter_config.json + adapter_model.safetensors;
-- import_adapter() serves such a zip as a model. Uses ticket_classifier (fixtures/ticket_classifier.psql) and
-- zips made by tests/regress.sh (tests/make_adapter_zips.py).
\ir fixtures/ticket_classifier.psql
\set VERBOSITY default
SET distill.weight_format = 'q8_0';
\getenv datafiles PGDATAFILES
\set zips :datafiles '/adapters'

-- A zip archive ("PK\3\4") of the two PEFT files.
SELECT substr(distill.export_adapter('ticket_classifier'), 1, 4) = '\x504b0304'::bytea AS is_zip,
       octet_length(distill.export_adapter('ticket_classifier')) > 1000000 AS has_weights;

-- Exported and imported again under another name: the same model.
SELECT distill.import_adapter('ticket_copy', 'smollm2-135m', distill.export_adapter('ticket_classifier'))
       - 'adapter_bytes' AS imported;
SELECT count(*) AS tickets,
       count(*) FILTER (WHERE distill.complete('ticket_copy', prompt, '{"max_tokens": 10}')
                            = distill.complete('ticket_classifier', prompt, '{"max_tokens": 10}')) AS same_reply
FROM (SELECT prompt FROM ticket_prompts WHERE split = 'test' ORDER BY id LIMIT 3) t;
SELECT name, base_model, job_id IS NULL AS imported, options->>'imported' AS options_imported
FROM distill.models WHERE name = 'ticket_copy';

-- The archive of another exporter (folder inside, deflated, PEFT's own file names) is read too.
SELECT distill.import_adapter('peft_layout', 'smollm2-135m', pg_read_binary_file(:'zips' || '/peft_layout.zip'))
       ->> 'target_modules' AS target_modules;
SELECT distill.complete('peft_layout', 'Hello', '{"max_tokens": 5}') <> distill.complete('smollm2-135m', 'Hello', '{"max_tokens": 5}')
       AS changes_the_model;

-- Bad archives and mismatches: clear errors, nothing stored.
\set VERBOSITY terse
SELECT distill.import_adapter('bad1', 'smollm2-135m', '\x00010203'::bytea);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.import_adapter('bad2', 'smollm2-135m', substr(distill.export_adapter('ticket_classifier'), 1, 5000));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.import_adapter('bad3', 'smollm2-135m', pg_read_binary_file(:'zips' || '/config_only.zip'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.import_adapter('bad4', 'smollm2-135m', pg_read_binary_file(:'zips' || '/other_base.zip'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.import_adapter('bad5', 'smollm2-135m', pg_read_binary_file(:'zips' || '/dora.zip'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.import_adapter('bad6', 'smollm2-135m', pg_read_binary_file(:'zips' || '/bad_json.zip'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.import_adapter('bad7', 'ticket_classifier', distill.export_adapter('ticket_classifier'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.import_adapter('bad8', 'no-such-model', distill.export_adapter('ticket_classifier'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.import_adapter('ticket_copy', 'smollm2-135m', distill.export_adapter('ticket_classifier'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.import_adapter('smollm2-135m', 'smollm2-135m', distill.export_adapter('ticket_classifier'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.import_adapter('bad name', 'smollm2-135m', distill.export_adapter('ticket_classifier'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.export_adapter('smollm2-135m');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.export_adapter('no_such_model');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) AS stored FROM distill.models WHERE name LIKE 'bad%';

-- Only the owner exports (a grant lets a role use a model, not copy it); the importer owns the import.
CREATE ROLE regress_importer IN ROLE distill_trainer;
CREATE TABLE adapter_zips AS SELECT pg_read_binary_file(:'zips' || '/peft_layout.zip') AS zip;
GRANT SELECT ON adapter_zips TO regress_importer;
SELECT distill.grant_model('ticket_classifier', 'regress_importer');
SET ROLE regress_importer;
SELECT distill.complete('ticket_classifier', 'Hello', '{"max_tokens": 2}') IS NOT NULL AS may_use;
SELECT distill.export_adapter('ticket_classifier');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.import_adapter('importer_copy', 'smollm2-135m', zip)->>'model' AS model FROM adapter_zips;
SELECT octet_length(distill.export_adapter('importer_copy')) > 0 AS exports_own_import;
RESET ROLE;
SELECT name, owner FROM distill.models WHERE name = 'importer_copy';
SELECT distill.revoke_model('ticket_classifier', 'regress_importer');
SELECT distill.drop_model('ticket_copy'), distill.drop_model('peft_layout'), distill.drop_model('importer_copy');
DROP TABLE adapter_zips;
DROP ROLE regress_importer;
