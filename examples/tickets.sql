-- The Snowflake Cortex fine-tuning quickstart, in PostgreSQL: label support tickets with a small model
-- fine-tuned on a few hundred labelled ones, all inside the database. Run by scripts/demo.sh
-- (\getenv needs psql 15+). Re-runnable: it replaces the model it made before.
\set ON_ERROR_STOP on
\getenv datadir DISTILL_DATA
\set train_csv :datadir '/train.csv'
\set test_csv :datadir '/test.csv'

CREATE EXTENSION IF NOT EXISTS pg_distill;

DROP TABLE IF EXISTS tickets_train, tickets_test CASCADE;
CREATE TABLE tickets_train (id text PRIMARY KEY, request text, label text);
CREATE TABLE tickets_test (id text PRIMARY KEY, request text, label text);
COPY tickets_train FROM :'train_csv' WITH (FORMAT csv, HEADER true);
COPY tickets_test FROM :'test_csv' WITH (FORMAT csv, HEADER true);

-- One instruction per ticket, naming the categories the labellers used.
CREATE VIEW ticket_prompts AS
SELECT id, request, label, 'train' AS split,
       'Classify this customer request into one of: Add new line, Closing account, Roaming fees, Slow data speed. '
       || E'Reply with the category only.\nRequest: ' || request AS prompt
FROM tickets_train
UNION ALL
SELECT id, request, label, 'test',
       'Classify this customer request into one of: Add new line, Closing account, Roaming fees, Slow data speed. '
       || E'Reply with the category only.\nRequest: ' || request
FROM tickets_test;

-- Start over: stop an unfinished run of an earlier demo and drop its model.
-- Clean-up from an earlier run, quietly (their result tables say nothing).
SET client_min_messages = warning;
\o /dev/null
SELECT distill.finetune('CANCEL', id) FROM distill.jobs WHERE model = 'ticket_classifier' AND status IN ('PENDING', 'IN_PROGRESS');
SELECT distill.wait(id) FROM distill.jobs WHERE model = 'ticket_classifier' AND status IN ('PENDING', 'IN_PROGRESS');
SELECT distill.drop_model(name) FROM distill.models WHERE name = 'ticket_classifier';
\o
RESET client_min_messages;

-- Fine-tune: returns at once with a job id; a background worker trains.
SELECT distill.finetune('CREATE', 'ticket_classifier', 'smollm2-135m',
       'SELECT prompt, label AS completion FROM ticket_prompts WHERE split = ''train''',
       'SELECT prompt, label AS completion FROM ticket_prompts WHERE split = ''test''') AS job \gset
\echo Training job :job (progress below; DESCRIBE it from another session too)
SELECT d->>'status' AS status, d->'trained_tokens' AS trained_tokens,
       round((d->'training_result'->>'training_loss')::numeric, 4) AS training_loss,
       round((d->'training_result'->>'validation_loss')::numeric, 4) AS validation_loss,
       d->'data'->'train_seconds' AS train_seconds
FROM distill.wait(:'job') AS d;

-- Its training completions were a closed set of 4 labels: the model stores them and answers from
-- them by default (never an invented label; '{"choices": false}' asks for free text). The epoch
-- with the lowest validation loss is the one kept.
SELECT m.labels, d->'data'->'kept_epoch' AS kept_epoch, d->'data'->>'kept_because' AS why
FROM distill.models m CROSS JOIN LATERAL distill.finetune('DESCRIBE', m.job_id) AS d
WHERE m.name = 'ticket_classifier';

-- Classify the held-out tickets with the tuned model and with the base model it started from.
-- Weights as the file stores them (Q4_1), distill.weight_format's default: on pg_distill's own int8
-- kernels the fastest format and the least memory (README, Performance: an 80-token prompt runs at
-- 1,126 tokens/s against q8_0's 798 with AVX-512 VNNI, 469 against 354 with AVX2).
\timing on
CREATE TEMP TABLE predictions AS
SELECT id, request, label,
       trim(distill.complete('ticket_classifier', prompt, '{"max_tokens": 10}')) AS tuned,
       trim(distill.complete('smollm2-135m', prompt, '{"max_tokens": 10}')) AS base
FROM ticket_prompts WHERE split = 'test';
\timing off

SELECT id, left(request, 60) || '...' AS request, tuned AS predicted, label, base AS base_model_said
FROM predictions ORDER BY id;

SELECT count(*) AS tickets,
       count(*) FILTER (WHERE tuned = label) AS tuned_correct,
       round(avg((tuned = label)::int), 3) AS tuned_accuracy,
       round(avg((base = label)::int), 3) AS base_accuracy
FROM predictions;
