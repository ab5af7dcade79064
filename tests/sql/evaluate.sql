-- distill.evaluate(): a model's replies to a query's prompts scored against its completions; and the
-- same metrics in DESCRIBE of the quickstart job (ticket_classifier: finetune_quickstart.sql, or fixtures/ticket_classifier.psql).
\ir fixtures/ticket_classifier.psql
\set VERBOSITY default
SET distill.weight_format = 'q8_0';

-- The tuned model on the 27 held-out tickets, free generation ("choices": false: by default it would
-- answer from its label set, labels.sql): replies get the longest completion's tokens + 16.
SELECT (e->>'rows')::int AS rows, (e->>'exact_match')::int >= 26 AS exact_match_26_or_more,
       (e->>'accuracy')::float8 >= 0.95 AS accuracy_at_least_95, (e->>'macro_f1')::float8 >= 0.9 AS macro_f1_at_least_90,
       (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(e->'per_label') k) AS labels,
       (SELECT sum((c->>'count')::int) FROM jsonb_array_elements(e->'confusion') c) AS confusion_total,
       (SELECT sum((v->>'support')::int) FROM jsonb_each(e->'per_label') AS p(k, v)) AS support_total,
       e->'options' AS options, e->'skipped_rows' AS skipped_rows
FROM distill.evaluate('ticket_classifier',
       'SELECT prompt, label AS completion FROM ticket_prompts WHERE split = ''test''', '{"choices": false}') AS e;

-- Per-label metrics, accuracy and macro-F1 equal what the confusion matrix gives by hand (the base
-- model constrained to the labels, so it makes mistakes to count): precision tp/predicted, recall
-- tp/support, F1 2tp/(predicted + support), 0 where nothing is predicted or expected.
CREATE TEMP TABLE eval6 AS SELECT distill.evaluate('smollm2-135m',
       'SELECT prompt, label AS completion FROM ticket_prompts WHERE split = ''test'' ORDER BY id LIMIT 6',
       '{"choices": true}') AS e;
CREATE TEMP VIEW by_hand AS
WITH c AS (SELECT c->>'expected' AS expected, c->>'predicted' AS predicted, (c->>'count')::int AS n
           FROM eval6, jsonb_array_elements(e->'confusion') c)
SELECT p.k AS label, p.v,
       coalesce((SELECT sum(n) FROM c WHERE expected = p.k AND predicted = p.k), 0) AS tp,
       coalesce((SELECT sum(n) FROM c WHERE predicted = p.k), 0) AS predicted,
       coalesce((SELECT sum(n) FROM c WHERE expected = p.k), 0) AS support
FROM eval6, jsonb_each(e->'per_label') AS p(k, v);
SELECT label, support, (v->>'support')::int = support AS support_by_hand,
       abs((v->>'precision')::float8 - CASE WHEN predicted = 0 THEN 0 ELSE tp::float8 / predicted END) < 1e-12 AS precision_by_hand,
       abs((v->>'recall')::float8 - CASE WHEN support = 0 THEN 0 ELSE tp::float8 / support END) < 1e-12 AS recall_by_hand,
       abs((v->>'f1')::float8 - CASE WHEN tp = 0 THEN 0 ELSE 2.0 * tp / (predicted + support) END) < 1e-12 AS f1_by_hand
FROM by_hand ORDER BY label;
SELECT (e->>'rows')::int AS rows, (e->>'exact_match')::int = (SELECT sum(tp) FROM by_hand) AS exact_match_by_hand,
       abs((e->>'accuracy')::float8 - (e->>'exact_match')::float8 / 6) < 1e-12 AS accuracy_by_hand,
       abs((e->>'macro_f1')::float8 - (SELECT avg((v->>'f1')::float8) FROM by_hand)) < 1e-12 AS macro_f1_by_hand,
       (SELECT sum(tp) FROM by_hand) < 6 AS has_mistakes
FROM eval6;
DROP VIEW by_hand;
DROP TABLE eval6;

-- "choices": true constrains the base model to the labels in the query: every reply is a label.
SELECT e->'options'->'choices' AS choices,
       (SELECT bool_and(c->>'predicted' IN ('Add new line', 'Closing account', 'Roaming fees', 'Slow data speed'))
        FROM jsonb_array_elements(e->'confusion') c) AS predictions_within_labels,
       (e->>'rows')::int AS rows
FROM distill.evaluate('smollm2-135m',
       'SELECT prompt, label AS completion FROM ticket_prompts WHERE split = ''test''', '{"choices": true}') AS e;

-- DESCRIBE of the finished job carries the same metrics on its validation rows (here test.csv).
SELECT (m->>'rows')::int AS rows, (m->>'of_validation_rows')::int AS of_validation_rows,
       (m->>'accuracy')::float8 >= 0.95 AS accuracy_at_least_95, m ? 'macro_f1' AS has_macro_f1,
       m ? 'per_label' AS has_per_label, m ? 'confusion' AS has_confusion
FROM (SELECT distill.finetune('DESCRIBE', id)->'validation_metrics' AS m
      FROM distill.jobs WHERE model = 'ticket_classifier' AND status = 'SUCCESS') d;
SELECT validation_accuracy >= 0.95 AS jobs_view_accuracy FROM distill.jobs WHERE model = 'ticket_classifier' AND status = 'SUCCESS';

-- count_tokens() on a tuned model uses its base model's tokenizer.
SELECT distill.count_tokens('ticket_classifier', 'Roaming fees') = distill.count_tokens('smollm2-135m', 'Roaming fees') AS same_tokenizer;

-- Bad input.
\set VERBOSITY terse
SELECT distill.evaluate('ticket_classifier', 'SELECT prompt, label AS completion FROM ticket_prompts WHERE false');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.evaluate('ticket_classifier', 'SELECT NULL::text AS prompt, label AS completion FROM ticket_prompts');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.evaluate('ticket_classifier', 'SELECT prompt FROM ticket_prompts');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.evaluate('ticket_classifier', 'DELETE FROM tickets_test');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.evaluate('ticket_classifier', 'SELECT prompt, label AS completion FROM no_such_table');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.evaluate('ticket_classifier', 'SELECT prompt, label AS completion FROM ticket_prompts', '{"choices": []}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.evaluate('ticket_classifier', 'SELECT prompt, label AS completion FROM ticket_prompts', '{"max_tokenz": 3}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.evaluate('ticket_classifier', 'SELECT prompt, label AS completion FROM ticket_prompts', '[]');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.evaluate('no-such-model', 'SELECT prompt, label AS completion FROM ticket_prompts LIMIT 1');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.evaluate('', 'SELECT prompt, label AS completion FROM ticket_prompts');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Generation metrics equal the reference packages' (rouge-score 0.1.2, sacrebleu 2.6.0): item 70 of
-- tests/fixtures/generation_metrics.json, its reply fixed by a single choice, scored against its five
-- references (rows sharing a prompt are one prompt's references). The packages' numbers: ROUGE-1
-- 0.9508196721311476, ROUGE-2 0.9152542372881356, ROUGE-L 0.9508196721311476, BLEU 88.37852011083906,
-- chrF 89.56307160484984.
SELECT round((e->'generation'->>'rouge1')::numeric, 9) AS rouge1, round((e->'generation'->>'rouge2')::numeric, 9) AS rouge2,
       round((e->'generation'->>'rougeL')::numeric, 9) AS rouge_l, round((e->'generation'->>'bleu')::numeric, 9) AS bleu,
       round((e->'generation'->>'chrf')::numeric, 9) AS chrf, e->'generation'->'predictions' AS predictions, e->'rows' AS rows, e->'metrics' AS metrics
FROM (SELECT distill.evaluate('smollm2-135m', $q$SELECT 'Describe The Eagle.' AS prompt, r AS completion FROM unnest(ARRAY[
  'There is a place called The Eagle that seems to be a Café Brazil is 5out of 5 and its in the centre of the city, this is not for kids',
  'The Eagle is a restaurant located near Café Brazil in the city centre. It is popular with customers but is not child friendly.',
  'The Eagle is in the city centre near to Café Brazil. Its not family-friendly and has a rating of 5 out of 5',
  'Near Café Brazil, in the city centre is a popular restaurant called The Eagle. It is not suitable for families.',
  'The Eagle is in the city centre near to Café Brazil. Its not family-friendly and has a rating of 5 out of 5']) r$q$,
  '{"choices": ["There is a called The Eagle that seems to be a Café Brazil is 5out of 5 and its in the centre of the city, this is not for there"], "metrics": ["generation"]}') AS e) t;

-- JSON metrics: a fixed reply {"a": 1, "b": "x"} against three expected objects: valid 1, exact match
-- 1/3 (key order and 1 vs 1.0 do not matter), per field a 2/3 (rows 1 and 2), b 2/3 (rows 1 and 3).
SELECT e->'json' AS json_metrics, e->'accuracy' AS label_accuracy, e->'metrics' AS metrics
FROM (SELECT distill.evaluate('smollm2-135m', $q$SELECT p AS prompt, c AS completion FROM (VALUES
  ('one', '{"b": "x", "a": 1.0}'), ('two', '{"a": 1, "b": "y"}'), ('three', '{"a": 2, "b": "x"}')) v(p, c)$q$,
  '{"choices": ["{\"a\": 1, \"b\": \"x\"}"], "metrics": ["json", "labels"]}') AS e) t;

-- By default the completions decide: JSON objects get JSON metrics (here with a response_format, so
-- every reply is valid JSON), free text gets generation metrics.
SELECT e->'metrics' AS metrics, (e->'json'->>'valid_json')::float8 AS valid_json, e->'incomplete_replies' AS incomplete
FROM (SELECT distill.evaluate('smollm2-135m', $q$SELECT 'Extract the name and age as JSON: ' || t AS prompt, c AS completion FROM (VALUES
  ('Anna is 34.', '{"name": "Anna", "age": 34}'), ('Omar, 51 years old.', '{"name": "Omar", "age": 51}')) v(t, c)$q$,
  '{"max_tokens": 40, "response_format": {"type": "json", "schema": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"], "additionalProperties": false}}}') AS e) t;
SELECT e->'metrics' AS metrics, (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(e->'generation') k) AS generation_keys,
       (e->'generation'->>'bleu')::float8 BETWEEN 0 AND 100 AS bleu_in_range, e->'generation'->'predictions' AS predictions
FROM (SELECT distill.evaluate('smollm2-135m', $q$SELECT 'Describe a pub called ' || n || ' in one sentence.' AS prompt, r AS completion FROM (VALUES
  ('The Eagle', 'The Eagle is a pub.'), ('The Eagle', 'The Eagle is a friendly pub by the river.'), ('Zizzi', 'Zizzi is a pub in the city centre.')) v(n, r)$q$,
  '{"max_tokens": 24}') AS e) t;
SELECT distill.evaluate('smollm2-135m', 'SELECT ''a'' AS prompt, ''b'' AS completion', '{"metrics": ["bleu", "perplexity"]}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
