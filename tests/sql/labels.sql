-- A tuned classifier keeps to its label set: the quickstart's model stores the 4 labels of its
-- training completions, complete() and evaluate() answer from them by default ("choices": false
-- for free text), DESCRIBE names the epoch kept; early stopping ends a run whose validation worsens.
\ir fixtures/ticket_classifier.psql
\set VERBOSITY default
SET distill.weight_format = 'q8_0';

-- The stored label set, in distill.models and in its job's DESCRIBE.
SELECT name, labels FROM distill.models WHERE name = 'ticket_classifier';
SELECT d->'data'->'labels' = m.labels AS describe_shows_the_labels,
       -- The kept epoch is the one with the lowest validation loss, and DESCRIBE says so.
       (d->'data'->>'kept_epoch')::int = (SELECT (e->>'epoch')::int FROM jsonb_array_elements(d->'epochs') e
                                          ORDER BY (e->>'validation_loss')::float8 LIMIT 1) AS kept_the_best_epoch,
       d->'data'->>'kept_because' LIKE 'the lowest validation loss (%) of the 3 epochs run' AS kept_because,
       (d->'training_result'->>'validation_loss')::float8
         = (SELECT min((e->>'validation_loss')::float8) FROM jsonb_array_elements(d->'epochs') e) AS result_is_the_kept_epochs,
       d->'data'->'stopped_early' AS stopped_early
FROM distill.models m CROSS JOIN LATERAL distill.finetune('DESCRIBE', m.job_id) AS d WHERE m.name = 'ticket_classifier';

-- By default the reply is one of the labels, even off topic and even with a token budget of 1 (a
-- label answer is always whole); "choices": false generates free text (1 token: no label is 1 token).
SELECT r IN ('Add new line', 'Closing account', 'Roaming fees', 'Slow data speed') AS a_label
FROM (VALUES (distill.complete('ticket_classifier', 'Write a short poem about the sea.')),
             (distill.complete('ticket_classifier', 'What is the capital of France?', '{"max_tokens": 1}')),
             (distill.complete('ticket_classifier', 'Write a short poem about the sea.', '{"choices": false, "max_tokens": 1}'))) t(r);
-- The chat form too; scores over the stored labels sum to 1.
SELECT r->'choices'->0->>'messages' IN ('Add new line', 'Closing account', 'Roaming fees', 'Slow data speed') AS chat_answers_a_label,
       (SELECT count(*) FROM jsonb_object_keys(r->'choices'->0->'scores')) AS scored_labels,
       (SELECT round(sum(value::float8)::numeric, 6) FROM jsonb_each(r->'choices'->0->'scores')) AS scores_sum
FROM distill.complete('ticket_classifier', '[{"role": "user", "content": "My bill has roaming charges from Spain."}]'::jsonb,
                      '{"scores": true}') AS r;
-- An explicit list still overrides the stored one.
SELECT distill.complete('ticket_classifier', 'Hello', '{"choices": ["yes", "no"]}') IN ('yes', 'no') AS explicit_choices_win;

-- evaluate() answers from the labels too, and says so.
SELECT e->'labels' AS labels, e->'options' AS options, (e->>'accuracy')::float8 >= 0.95 AS accuracy_at_least_95
FROM distill.evaluate('ticket_classifier',
       'SELECT prompt, label AS completion FROM ticket_prompts WHERE split = ''test''') AS e;

-- Mistakes: sampling needs free text; scores need a label set or choices.
SELECT distill.complete('ticket_classifier', 'Hello', '{"temperature": 0.7}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'Hello', '{"scores": true}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('ticket_classifier', 'Hello', '{"choices": false, "scores": true}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('ticket_classifier', 'Hello', '{"choices": true}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Early stopping: validation rows that contradict the training rows (each ticket with another
-- ticket's label) get worse as training learns; patience 1 ends the run at the first epoch that does
-- not improve, and the best epoch before it is kept.
SET client_min_messages = warning;
-- A table, not a temporary one: the background worker reads it in a session of its own.
DROP TABLE IF EXISTS contradicting;
CREATE TABLE contradicting AS
SELECT id, prompt, label,
       coalesce(lead(label) OVER (ORDER BY id), (SELECT label FROM ticket_prompts WHERE split = 'train' ORDER BY id LIMIT 1)) AS other_label
FROM (SELECT * FROM ticket_prompts WHERE split = 'train' ORDER BY id LIMIT 16) t;
SELECT distill.finetune('CREATE', 'early_stopper', 'smollm2-135m',
       'SELECT prompt, label AS completion FROM contradicting',
       'SELECT prompt, other_label AS completion FROM contradicting WHERE other_label <> label',
       '{"max_epochs": 4, "batch_size": 4, "learning_rate": 0.003, "target_modules": ["q_proj", "v_proj"],
         "early_stopping": true, "patience": 1}') AS job \gset
SELECT d->>'status' AS status, d->'data'->'stopped_early' AS stopped_early,
       jsonb_array_length(d->'epochs') < 4 AS fewer_epochs_than_planned,
       (d->'data'->>'kept_epoch')::int = jsonb_array_length(d->'epochs') - 1 AS kept_the_epoch_before,
       d->'data'->>'kept_because' LIKE '%; early stopping ended the run after epoch % of 4' AS kept_because
FROM distill.wait(:'job') AS d;
SELECT distill.drop_model('early_stopper');
DROP TABLE contradicting;
RESET client_min_messages;
