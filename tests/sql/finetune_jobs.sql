-- Jobs in the background worker: CANCEL, a failing training query, a role without SELECT, a worker
-- restart with a job in flight, complete() and drop_model() on a tuned model. Small jobs (q,v, few rows).
\ir fixtures/tickets.psql
\set VERBOSITY default
-- Progress NOTICEs from distill.wait() carry timings and losses: keep them out of the expected output.
SET client_min_messages = warning;

CREATE FUNCTION wait_for_step(job text, min_step int DEFAULT 1) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..1200 LOOP
    IF coalesce((distill.finetune('DESCRIBE', job)->>'step')::int, 0) >= min_step THEN RETURN true; END IF;
    PERFORM pg_sleep(0.5);
  END LOOP;
  RETURN false;
END $$;

-- A training query that fails at run time (not at CREATE): the job ends in ERROR, the worker lives on;
-- DESCRIBE keeps the error's SQLSTATE (22012: division by zero).
SELECT distill.finetune('CREATE', 'bad_query', 'smollm2-135m',
       'SELECT request AS prompt, (1 / (length(request) - length(request)))::text AS completion FROM tickets_train') AS job \gset
SELECT d->>'status' AS status, d->>'error' AS error, d->'data'->>'error_sqlstate' AS sqlstate FROM distill.wait(:'job') AS d;

-- No usable rows: NULL and blank values are skipped and counted (P0002: no_data_found).
SELECT distill.finetune('CREATE', 'no_rows', 'smollm2-135m',
       'SELECT NULL::text AS prompt, label AS completion FROM tickets_train UNION ALL SELECT request, '' '' FROM tickets_train') AS job \gset
SELECT d->>'status' AS status, d->>'error' AS error, d->'data'->>'error_sqlstate' AS sqlstate FROM distill.wait(:'job') AS d;

-- A long job, cancelled while it trains: it stops within a step or two and leaves no model.
SELECT distill.finetune('CREATE', 'cancel_me', 'smollm2-135m',
       'SELECT request AS prompt, label AS completion FROM tickets_train', NULL,
       '{"max_epochs": 10, "batch_size": 4, "target_modules": ["q", "v"]}') AS long_job \gset
SELECT wait_for_step(:'long_job') AS training;

-- Meanwhile, a role without SELECT on a table cannot train on it ...
CREATE ROLE regress_analyst IN ROLE distill_trainer;
GRANT SELECT ON tickets_test TO regress_analyst;
SET ROLE regress_analyst;
SELECT distill.finetune('CREATE', 'analyst_model', 'smollm2-135m', 'SELECT request AS prompt, label AS completion FROM tickets_train');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- ... and sees neither others' jobs nor their details.
SELECT distill.finetune('SHOW') AS analyst_show;
SELECT count(*) AS analyst_jobs FROM distill.jobs;
SELECT distill.finetune('DESCRIBE', :'long_job');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CANCEL', :'long_job');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- A job on a table it may read is queued (behind the long job) ...
SELECT distill.finetune('CREATE', 'analyst_model', 'smollm2-135m', 'SELECT request AS prompt, label AS completion FROM tickets_test',
       NULL, '{"max_epochs": 1, "target_modules": ["q", "v"]}') AS analyst_job \gset
SELECT count(*) AS analyst_jobs FROM distill.jobs;
RESET ROLE;
-- ... and runs with the analyst's rights when its turn comes, which by then exclude the table.
REVOKE SELECT ON tickets_test FROM regress_analyst;

SELECT d->>'status' AS status, (d->'cancel_requested')::boolean AS cancel_requested FROM distill.finetune('CANCEL', :'long_job') AS d;
SELECT d->>'status' AS status, (d->>'step')::int < (d->>'total_steps')::int AS stopped_early, d->'training_result' IS NOT NULL AS has_losses
FROM distill.wait(:'long_job') AS d;
SELECT count(*) AS cancelled_models FROM distill.models WHERE name = 'cancel_me';
SELECT distill.finetune('CANCEL', :'long_job');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

SELECT d->>'status' AS status, d->>'error' AS error FROM distill.wait(:'analyst_job') AS d;

-- A worker terminated mid-job: the job goes back to the queue and a restarted worker finishes it.
-- (batch_size 1: 21 steps, so the terminate lands while it trains, not after a 6-step run ended.)
SELECT distill.finetune('CREATE', 'restarted', 'smollm2-135m',
       'SELECT request AS prompt, label AS completion FROM tickets_train ORDER BY id LIMIT 24', NULL,
       '{"max_epochs": 1, "batch_size": 1, "target_modules": ["q", "v"]}') AS job \gset
SELECT wait_for_step(:'job') AS training;
SELECT count(pg_terminate_backend(pid)) AS terminated FROM pg_stat_activity WHERE backend_type = 'pg_distill worker';
SELECT d->>'status' AS status, d->'attempts' AS attempts, d->'data'->'training_rows' AS training_rows,
       d->'data'->'validation_rows' AS validation_rows, d->'data'->>'validation_source' AS validation_source,
       jsonb_array_length(d->'epochs') AS epochs, (d->>'trained_tokens')::int > 0 AS trained_tokens
FROM distill.wait(:'job') AS d;

-- The tuned model serves like a base model; its adapter is in the registry.
SELECT name, base_model, owner, adapter_bytes > 0 AS has_adapter, options FROM distill.models;
SELECT length(distill.complete('restarted', 'My phone bill shows roaming charges from my trip.', '{"max_tokens": 8}')) > 0 AS completes;
SELECT distill.complete('restarted', 'Hello', '{"max_tokens": 6}') = distill.complete('restarted', 'Hello', '{"max_tokens": 6}') AS deterministic;
SELECT distill.complete('restarted', 'Hello', '{"max_tokens": 6}') <> distill.complete('smollm2-135m', 'Hello', '{"max_tokens": 6}') AS differs_from_base;
-- Tuning a tuned model is refused, and so is reusing its name.
SELECT distill.finetune('CREATE', 'again', 'restarted', 'SELECT request AS prompt, label AS completion FROM tickets_train');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('CREATE', 'restarted', 'smollm2-135m', 'SELECT request AS prompt, label AS completion FROM tickets_train');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Only its owner (or a superuser) drops it; afterwards the name is unknown, in this session too.
SET ROLE regress_analyst;
SELECT distill.drop_model('restarted');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT distill.drop_model('restarted');
SELECT distill.complete('restarted', 'Hello');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.drop_model('restarted');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
DROP ROLE regress_analyst;

-- A job whose estimated peak memory is above distill.max_training_memory ends before training.
ALTER SYSTEM SET distill.max_training_memory = '1GB';
SELECT pg_reload_conf();
SELECT pg_sleep(1);
SELECT distill.finetune('CREATE', 'too_big', 'smollm2-135m', 'SELECT request AS prompt, label AS completion FROM tickets_train') AS job \gset
-- The estimate itself depends on the CPU (bf16 copies of the weights where AMX trains): N here.
SELECT d->>'status' AS status, regexp_replace(d->>'error', 'about \d+ MB', 'about N MB') AS error,
       (d->>'error' ~ 'about \d+ MB') AS names_its_estimate, d->'trained_tokens' AS trained_tokens
FROM distill.wait(:'job') AS d;
ALTER SYSTEM RESET distill.max_training_memory;
SELECT pg_reload_conf();
