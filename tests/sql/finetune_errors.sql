-- finetune(): every check CREATE makes in the caller's session, and the shape of DESCRIBE and SHOW.
-- Also loads the shipped support tickets for the finetune_* tests that follow.
\set VERBOSITY default
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_distill;
RESET client_min_messages;
\getenv datafiles PGDATAFILES
\set train_csv :datafiles '/train.csv'
\set test_csv :datafiles '/test.csv'
CREATE TABLE tickets_train (id text, request text, label text);
CREATE TABLE tickets_test (id text, request text, label text);
COPY tickets_train FROM :'train_csv' WITH (FORMAT csv, HEADER true);
COPY tickets_test FROM :'test_csv' WITH (FORMAT csv, HEADER true);
CREATE TABLE numbers (prompt text, completion int);
\set q 'SELECT request AS prompt, label AS completion FROM tickets_train'

-- Verbs and arguments.
SELECT distill.finetune('EXPLODE');
SELECT distill.finetune(NULL);
SELECT distill.finetune('CREATE');
SELECT distill.finetune('SHOW', 'ft_x');
SELECT distill.finetune('CREATE', 'm');
SELECT distill.finetune('DESCRIBE', 'ft_no_such_job');
SELECT distill.finetune('describe', 'ft_no_such_job');
SELECT distill.finetune('DESCRIBE', NULL);
SELECT distill.finetune('CANCEL', 'ft_no_such_job');
SELECT distill.finetune('DESCRIBE', 'ft_x', 'smollm2-135m', :'q');
SELECT distill.finetune('CREATE', NULL, 'smollm2-135m', :'q');
SELECT distill.finetune('CREATE', 'm', NULL, :'q');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', NULL);
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', '   ');

-- Model names.
SELECT distill.finetune('CREATE', '1model', 'smollm2-135m', :'q');
SELECT distill.finetune('CREATE', '../etc/passwd', 'smollm2-135m', :'q');
SELECT distill.finetune('CREATE', repeat('m', 64), 'smollm2-135m', :'q');
SELECT distill.finetune('CREATE', 'smollm2-135m', 'smollm2-135m', :'q');

-- Base models.
SELECT distill.finetune('CREATE', 'm', 'no-such-model', :'q');

-- Queries: one plain SELECT with text columns prompt and completion, runnable by the caller.
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELEC request FROM tickets_train');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT 1; SELECT 2');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'INSERT INTO numbers VALUES (''a'', 1) RETURNING prompt, completion::text AS completion');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'WITH d AS (DELETE FROM numbers RETURNING *) SELECT prompt, completion::text FROM d');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT prompt, completion::text AS completion FROM numbers FOR UPDATE');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT request AS prompt, label INTO new_table FROM tickets_train');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT request AS prompt FROM tickets_train');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT request AS prompt, label AS prompt, label AS completion FROM tickets_train');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT prompt, completion FROM numbers');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT request AS prompt, label AS completion FROM no_such_table');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', 'SELECT 1 AS prompt');

-- Options.
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '[1]');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"epochs": 2}');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"max_epochs": 11}');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"max_epochs": "two"}');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"learning_rate": 0}');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"lora_r": 0}');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"target_modules": ["q", "z"]}');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"target_modules": []}');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"batch_size": 0}');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"max_seq_len": 8}');
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"validation_fraction": 0.9}');

-- A queued job, cancelled before any worker could see it (same transaction): DESCRIBE's and SHOW's shape.
BEGIN;
SELECT distill.finetune('CREATE', 'never_trained', 'smollm2-135m', :'q', NULL,
       '{"max_epochs": 1, "target_modules": ["q_proj", "v"]}') AS job \gset
SELECT :'job' ~ '^ft_[0-9a-f-]{36}$' AS job_id_ok;
-- The name is held by the queued job.
SAVEPOINT s;
SELECT distill.finetune('CREATE', 'never_trained', 'smollm2-135m', :'q');
ROLLBACK TO SAVEPOINT s;
SELECT d->>'status' AS status, d->'cancel_requested' AS cancel_requested
FROM distill.finetune('CANCEL', :'job') AS d;
COMMIT;
SELECT distill.finetune('CANCEL', :'job');
SELECT key, jsonb_typeof(value) AS type FROM jsonb_each(distill.finetune('DESCRIBE', :'job')) ORDER BY key;
SELECT d->>'status' AS status, d->>'model' AS model, d->>'base_model' AS base_model, d->>'training_data' AS training_data,
       d->'options' AS options, d->>'owner' AS owner, d->'progress' AS progress
FROM distill.finetune('DESCRIBE', :'job') AS d;
SELECT jsonb_typeof(distill.finetune('SHOW')) AS show_type;
SELECT DISTINCT jsonb_object_keys(j) AS show_keys FROM jsonb_array_elements(distill.finetune('SHOW')) AS j ORDER BY 1;
SELECT model, status, progress FROM distill.jobs WHERE id = :'job';
-- It made no model.
SELECT count(*) AS models FROM distill.models WHERE name = 'never_trained';
