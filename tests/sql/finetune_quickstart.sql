-- The quickstart, in SQL: fine-tune the default model on the shipped support tickets (train.csv),
-- classify the held-out tickets (test.csv) with the tuned model, and require >= 95% exact matches.
\set VERBOSITY default
SET client_min_messages = warning;
-- tickets_train, tickets_test and the prompts view ticket_prompts.
\ir fixtures/tickets.psql

SELECT distill.finetune('CREATE', 'ticket_classifier', 'smollm2-135m',
       'SELECT prompt, label AS completion FROM ticket_prompts WHERE split = ''train''',
       'SELECT prompt, label AS completion FROM ticket_prompts WHERE split = ''test''') AS job \gset

SELECT d->>'status' AS status, (d->>'progress')::float AS progress, jsonb_array_length(d->'epochs') AS epochs,
       d->'data'->'training_rows' AS training_rows, d->'data'->'validation_rows' AS validation_rows,
       (d->'training_result'->>'validation_loss')::float < (d->'epochs'->0->>'validation_loss')::float
         OR (d->'training_result'->>'validation_loss')::float < 0.05 AS validation_loss_fell
FROM distill.wait(:'job') AS d;

-- Q8_0 weights serve about 4x faster than the file's Q4_1 (README, Performance).
SET distill.weight_format = 'q8_0';
CREATE TEMP TABLE predictions AS
SELECT id, label, distill.complete('ticket_classifier', prompt, '{"max_tokens": 10}') AS predicted
FROM ticket_prompts WHERE split = 'test';

SELECT count(*) AS test_rows,
       avg((trim(predicted) = label)::int) >= 0.95 AS accuracy_at_least_95
FROM predictions;
