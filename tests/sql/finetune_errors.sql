-- finetune(): every check CREATE makes in the caller's session, and the shape of DESCRIBE and SHOW.
\ir fixtures/tickets.psql
\set VERBOSITY default
CREATE TABLE numbers (prompt text, completion int);
\set q 'SELECT request AS prompt, label AS completion FROM tickets_train'

-- Verbs and arguments.
SELECT distill.finetune('EXPLODE');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune(NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('SHOW', 'ft_x');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('DESCRIBE', 'ft_no_such_job');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('describe', 'ft_no_such_job');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('DESCRIBE', NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CANCEL', 'ft_no_such_job');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('DESCRIBE', 'ft_x', 'smollm2-135m', :'q');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', NULL, 'smollm2-135m', :'q');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', NULL, :'q');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', '   ');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Model names.
SELECT distill.finetune('CREATE', '1model', 'smollm2-135m', :'q');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', '../etc/passwd', 'smollm2-135m', :'q');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', repeat('m', 64), 'smollm2-135m', :'q');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'smollm2-135m', 'smollm2-135m', :'q');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Base models.
SELECT distill.finetune('CREATE', 'm', 'no-such-model', :'q');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Queries: one plain SELECT with text columns prompt and completion, runnable by the caller.
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELEC request FROM tickets_train');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT 1; SELECT 2');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'INSERT INTO numbers VALUES (''a'', 1) RETURNING prompt, completion::text AS completion');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'WITH d AS (DELETE FROM numbers RETURNING *) SELECT prompt, completion::text FROM d');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT prompt, completion::text AS completion FROM numbers FOR UPDATE');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT request AS prompt, label INTO new_table FROM tickets_train');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT request AS prompt FROM tickets_train');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT request AS prompt, label AS prompt, label AS completion FROM tickets_train');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT prompt, completion FROM numbers');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', 'SELECT request AS prompt, label AS completion FROM no_such_table');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', 'SELECT 1 AS prompt');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Options.
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '[1]');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"epochs": 2}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"max_epochs": 11}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"max_epochs": "two"}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"learning_rate": 0}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"lora_r": 0}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"target_modules": ["q", "z"]}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"target_modules": []}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"batch_size": 0}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"max_seq_len": 8}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"validation_fraction": 0.9}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"patience": 2}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"early_stopping": true, "patience": 0}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'm', 'smollm2-135m', :'q', NULL, '{"early_stopping": "yes"}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- A queued job, cancelled before any worker could see it (same transaction): DESCRIBE's and SHOW's shape.
BEGIN;
SELECT distill.finetune('CREATE', 'never_trained', 'smollm2-135m', :'q', NULL,
       '{"max_epochs": 1, "target_modules": ["q_proj", "v"]}') AS job \gset
SELECT :'job' ~ '^ft_[0-9a-f-]{36}$' AS job_id_ok;
-- The name is held by the queued job.
SAVEPOINT s;
SELECT distill.finetune('CREATE', 'never_trained', 'smollm2-135m', :'q');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT d->>'status' AS status, d->'cancel_requested' AS cancel_requested
FROM distill.finetune('CANCEL', :'job') AS d;
COMMIT;
SELECT distill.finetune('CANCEL', :'job');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT key, jsonb_typeof(value) AS type FROM jsonb_each(distill.finetune('DESCRIBE', :'job')) ORDER BY key;
SELECT d->>'status' AS status, d->>'model' AS model, d->>'base_model' AS base_model, d->>'training_data' AS training_data,
       d->'options' AS options, d->>'owner' AS owner, d->'progress' AS progress
FROM distill.finetune('DESCRIBE', :'job') AS d;
SELECT jsonb_typeof(distill.finetune('SHOW')) AS show_type;
SELECT DISTINCT jsonb_object_keys(j) AS show_keys FROM jsonb_array_elements(distill.finetune('SHOW')) AS j ORDER BY 1;
SELECT model, status, progress FROM distill.jobs WHERE id = :'job';
-- It made no model.
SELECT count(*) AS models FROM distill.models WHERE name = 'never_trained';
