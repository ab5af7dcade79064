-- The distillation flow (README, "Distillation"; examples/distill.sql): a teacher labels rows, a
-- student is tuned on the labels, and the student's agreement with the teacher is measured on rows it
-- did not see. The teacher here is the endpoint serving the base model on llama.cpp's server with a
-- few-shot prompt (in production: a large model); the student the same small model, LoRA-tuned.
-- Run by tests/endpoints.sh (:llama the server's port, :datadir where the ticket CSVs are).
\set VERBOSITY default
SET client_min_messages = warning;
\set llama_v1 'http://127.0.0.1:' :llama '/v1'
\set train_csv :datadir '/train.csv'
\set test_csv :datadir '/test.csv'
CREATE TABLE tickets_train (id text, request text, label text);
CREATE TABLE tickets_test (id text, request text, label text);
COPY tickets_train FROM :'train_csv' WITH (FORMAT csv, HEADER true);
COPY tickets_test FROM :'test_csv' WITH (FORMAT csv, HEADER true);
CREATE VIEW tickets AS SELECT id, request, 'train' AS split FROM tickets_train UNION ALL SELECT id, request, 'test' FROM tickets_test;

SELECT distill.create_endpoint('teacher', :'llama_v1', 'smollm2', '{"response_format_style": "json_object"}');
-- The teacher's prompt: instructions and one example per category.
CREATE VIEW teacher_prompts AS
SELECT id, split, E'Classify the customer request into one of: Add new line, Closing account, Roaming fees, Slow data speed.\n\n'
    || E'Request: I was charged $80 for roaming during my trip to Mexico. Please refund it.\nCategory: Roaming fees\n\n'
    || E'Request: My internet has been very slow for three days, pages take forever to load.\nCategory: Slow data speed\n\n'
    || E'Request: I want to add my son to my plan with a new phone number.\nCategory: Add new line\n\n'
    || E'Request: Please close my account, I am moving to another provider.\nCategory: Closing account\n\n'
    || 'Request: ' || request || E'\nCategory:' AS prompt
FROM tickets;
-- The student's prompt: short, as it will be asked in production.
CREATE VIEW student_prompts AS
SELECT id, split, 'Classify this customer request into one of: Add new line, Closing account, Roaming fees, Slow data speed. '
                  || E'Reply with the category only.\nRequest: ' || request AS prompt
FROM tickets;

-- 1. The teacher labels every ticket (8 requests in flight); a failed row would keep its error.
CREATE TABLE teacher_labels AS
SELECT id, completion AS label, error
FROM distill.complete_rows('teacher', 'SELECT id, prompt FROM teacher_prompts',
                           '{"choices": ["Add new line", "Closing account", "Roaming fees", "Slow data speed"]}');
SELECT count(*) AS labelled, count(*) FILTER (WHERE error IS NULL) AS answered,
       count(*) FILTER (WHERE label NOT IN ('Add new line', 'Closing account', 'Roaming fees', 'Slow data speed')) AS outside_labels
FROM teacher_labels;

-- 2. The student learns the teacher's labels of the training tickets.
SELECT distill.finetune('CREATE', 'student', 'smollm2-135m',
       $$SELECT s.prompt, t.label AS completion FROM student_prompts s JOIN teacher_labels t USING (id)
         WHERE s.split = 'train' AND t.error IS NULL$$) AS job \gset
SELECT d->>'status' AS status, d->'data'->'training_rows' AS training_rows FROM distill.wait(:'job') AS d;

-- 3. Agreement with the teacher on the held-out tickets, and accuracy on the human labels.
CREATE TABLE flow_results AS
SELECT distill.evaluate('student', $$SELECT s.prompt, t.label AS completion FROM student_prompts s JOIN teacher_labels t USING (id)
                                     WHERE s.split = 'test' AND t.error IS NULL$$) AS agreement,
       distill.evaluate('student', $$SELECT s.prompt, h.label AS completion FROM student_prompts s JOIN tickets_test h USING (id)$$) AS human;
SELECT agreement->'rows' AS held_out_rows, (agreement->>'accuracy')::float >= 0.8 AS student_agrees_with_teacher,
       human->'rows' AS human_rows
FROM flow_results;

-- 4. The same in one statement: the training query asks the teacher itself, in the worker.
SELECT distill.finetune('CREATE', 'student_direct', 'smollm2-135m',
       $$SELECT s.prompt, distill.complete('teacher', t.prompt,
                  '{"choices": ["Add new line", "Closing account", "Roaming fees", "Slow data speed"]}') AS completion
         FROM student_prompts s JOIN teacher_prompts t USING (id) WHERE s.split = 'train' ORDER BY id LIMIT 40$$,
       NULL, '{"max_epochs": 1}') AS job \gset
SELECT d->>'status' AS status, d->'data'->'training_rows' AS training_rows, d->>'error' AS error FROM distill.wait(:'job') AS d;
