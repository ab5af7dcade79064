-- Bad input that must give a clear ERROR (or a defined result) and never crash the backend:
-- odd text, huge text, one-row and NULL-row training sets, missing, corrupt and truncated model
-- files, a tampered adapter in the registry. (finetune_errors.sql and complete.sql hold the rest
-- of the matrix: NULL and empty arguments, unknown verbs and models, bad queries and options.)
\ir fixtures/extension.psql
\set VERBOSITY default
SET client_min_messages = warning;
\getenv datafiles PGDATAFILES
\set badmodels :datafiles '/badmodels'
SET distill.weight_format = 'q8_0';

-- Odd Unicode in prompts: emoji, right-to-left, zero-width and control characters all complete.
SELECT length(distill.complete('smollm2-135m', p, '{"max_tokens": 4}')) > 0 AS completes
FROM (VALUES ('Roaming 📱💸 charges?'), ('שלום, החשבון שלי'), (E'zero\u200Bwidth\u200Djoin\uFEFF'),
             (E'control \u0001\u0007\u001B[31m chars'), ('مرحبا 123 ١٢٣')) AS t(p);
-- A prompt of only a zero-width space is blank to the model but not to trim(): it completes.
SELECT length(distill.complete('smollm2-135m', E'\u200B', '{"max_tokens": 2}')) >= 0 AS completes;
-- Longer than the model's context (8192 tokens).
SELECT distill.complete('smollm2-135m', repeat('roaming fees ', 5000));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- Options of the wrong type or out of range.
SELECT distill.complete('smollm2-135m', 'hi', '{"max_tokens": -1}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'hi', '{"temperature": 9}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'hi', '{"stop": "x"}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'hi', 'null');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Training: one row (nothing to hold out), NULL and blank rows skipped and counted, an example
-- longer than max_seq_len cut and counted.
SELECT distill.finetune('CREATE', 'one_row', 'smollm2-135m',
       'SELECT * FROM (VALUES (''My bill shows roaming fees'', ''Roaming fees''), (NULL, ''x''), (''y'', NULL), (''  '', ''z'')) AS t(prompt, completion)',
       NULL, '{"max_epochs": 1, "target_modules": ["q"]}') AS job \gset
SELECT d->>'status' AS status, d->'data'->'training_rows' AS training_rows, d->'data'->'skipped_rows' AS skipped,
       d->'data'->>'validation_source' AS validation, d->'training_result'->'validation_loss' AS validation_loss
FROM distill.wait(:'job') AS d;
SELECT distill.finetune('CREATE', 'long_row', 'smollm2-135m',
       'SELECT repeat(''roaming fees '', 300) AS prompt, ''Roaming fees'' AS completion',
       NULL, '{"max_epochs": 1, "target_modules": ["q"], "max_seq_len": 64}') AS job \gset
SELECT d->>'status' AS status, d->'data'->'truncated_examples' AS truncated FROM distill.wait(:'job') AS d;

-- An adapter blob tampered with in the registry is refused when loaded, with the model's name
-- (a changed adapter gets a new version: sessions that had loaded it reload it).
SELECT length(distill.complete('one_row', 'roaming?', '{"max_tokens": 3}')) > 0 AS tuned_completes;
UPDATE distill.model_registry SET adapter = substring(adapter FROM 1 FOR 200) WHERE name = 'one_row';
SELECT distill.complete('one_row', 'roaming?');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
UPDATE distill.model_registry SET adapter = overlay(adapter PLACING '\xdeadbeefdeadbeef'::bytea FROM 9 FOR 8) WHERE name = 'long_row';
SELECT distill.complete('long_row', 'roaming?');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.drop_model('one_row'), distill.drop_model('long_row');

-- Missing, corrupt and truncated model files (made by tests/regress.sh in a directory of their own).
SET distill.model_dir = :'badmodels';
SELECT distill.complete('smollm2-135m', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('garbage', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('truncated', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('empty', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'truncated', 'SELECT ''a'' AS prompt, ''b'' AS completion');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'garbage', 'SELECT ''a'' AS prompt, ''b'' AS completion');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- A model directory the server cannot write: a download fails before touching the network.
SET distill.model_dir = '/usr';
SELECT distill.complete('some-org/some-repo/model.gguf', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- A full disk (the download's write probe lands on /dev/full): the same error, saying so.
\set fullmodels :datafiles '/fullmodels'
SET distill.model_dir = :'fullmodels';
SELECT distill.complete('some-org/some-repo/model.gguf', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
RESET distill.model_dir;
-- Devices: CUDA in a build without it is an error that says so (even with the model already loaded
-- on the CPU); a setting that names no device is refused.
SET distill.device = 'cuda';
SELECT distill.complete('smollm2-135m', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SET distill.device = 'gpu';
SELECT distill.count_tokens('smollm2-135m', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SET distill.device = 'cpu';
SELECT distill.version() LIKE '%cpu%' AS says_cpu;
RESET distill.device;
-- The session still works.
SELECT length(distill.complete('smollm2-135m', 'hi', '{"max_tokens": 2}')) > 0 AS still_works;
