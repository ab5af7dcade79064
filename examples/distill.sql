-- Distillation, inside the database: a large model (the teacher, any OpenAI-compatible server) labels
-- a few hundred support tickets, a small model (the student) is LoRA-tuned on those labels, and the
-- student then serves the whole table. Held-out teacher labels tell how far the student can be
-- trusted ("agreement"); human labels, where there are some, how right both are.
--
--   psql -v teacher_url=https://api.openai.com/v1 -v teacher_model=gpt-4o-mini \
--        -v datadir=/path/to/data/support_tickets -f examples/distill.sql
--
-- As a superuser (or a member of distill_endpoint_admin: then give the key inline, see step 1).
-- The key is read from the server's environment: start PostgreSQL with OPENAI_API_KEY set. Any
-- OpenAI-compatible server will do (vLLM, llama.cpp's server, Ollama at http://host:11434/v1,
-- LiteLLM); tests/endpoint/distill_flow.sql runs this flow against llama.cpp's server.
\set ON_ERROR_STOP on
\set train_csv :datadir '/train.csv'
\set test_csv :datadir '/test.csv'
CREATE EXTENSION IF NOT EXISTS pg_distill;

DROP TABLE IF EXISTS tickets_train, tickets_test, teacher_labels CASCADE;
CREATE TABLE tickets_train (id text PRIMARY KEY, request text, label text);
CREATE TABLE tickets_test (id text PRIMARY KEY, request text, label text);
COPY tickets_train FROM :'train_csv' WITH (FORMAT csv, HEADER true);
COPY tickets_test FROM :'test_csv' WITH (FORMAT csv, HEADER true);
-- The labels are not used for training: the teacher's are. They only score both models at the end.
CREATE VIEW tickets AS
SELECT id, request, 'train' AS split FROM tickets_train UNION ALL SELECT id, request, 'test' FROM tickets_test;

-- 1. The teacher, registered once. Rows sent to it leave the database: only superusers and members
--    of distill_endpoint_admin may register one. The key comes from the server's environment
--    (superuser), or is given inline, '{"api_key": "sk-..."}', and stored where only the extension's
--    owner can read it; it never appears in a view, an error or pg_dump's output.
SELECT distill.drop_endpoint('teacher') FROM distill.endpoints WHERE name = 'teacher';
SELECT distill.create_endpoint('teacher', :'teacher_url', :'teacher_model',
                               '{"api_key_env": "OPENAI_API_KEY", "timeout": 60, "max_retries": 4}');
SELECT distill.complete('teacher', 'Say hello in one word.', '{"max_tokens": 5}') AS teacher_says;

-- 2. The teacher labels every ticket: 8 requests in flight, NOTICEs with rows/s and the time left.
--    With "choices", replies are held to the labels (a JSON schema the server enforces). A row that
--    fails after the retries keeps its error instead of stopping the run; run those again later.
CREATE TABLE teacher_labels AS
SELECT id, completion AS label, error
FROM distill.complete_rows('teacher',
       $$SELECT id, 'Classify this customer request into one of: Add new line, Closing account, Roaming fees, Slow data speed.'
                    || E'\nRequest: ' || request AS prompt FROM tickets$$,
       '{"choices": ["Add new line", "Closing account", "Roaming fees", "Slow data speed"]}');
SELECT count(*) AS labelled, count(*) FILTER (WHERE error IS NOT NULL) AS failed FROM teacher_labels;

-- 3. The student: the default small model, tuned on the teacher's labels of the training tickets,
--    with the short prompt it will be asked in production.
CREATE VIEW student_prompts AS
SELECT id, split, 'Classify this customer request into one of: Add new line, Closing account, Roaming fees, Slow data speed. '
                  || E'Reply with the category only.\nRequest: ' || request AS prompt
FROM tickets;
SELECT distill.drop_model('ticket_student') FROM distill.models WHERE name = 'ticket_student';
SELECT distill.finetune('CREATE', 'ticket_student', 'smollm2-135m',
       $$SELECT s.prompt, t.label AS completion FROM student_prompts s JOIN teacher_labels t USING (id)
         WHERE s.split = 'train' AND t.error IS NULL$$) AS job \gset
SELECT d->>'status' AS status, d->'data'->'training_rows' AS training_rows FROM distill.wait(:'job') AS d;

-- 4. How far to trust it: agreement with the teacher on tickets it did not see, and accuracy of
--    both on the human labels.
SELECT (distill.evaluate('ticket_student',
          $$SELECT s.prompt, t.label AS completion FROM student_prompts s JOIN teacher_labels t USING (id)
            WHERE s.split = 'test' AND t.error IS NULL$$))->'accuracy' AS student_agrees_with_teacher,
       (distill.evaluate('ticket_student',
          $$SELECT s.prompt, h.label AS completion FROM student_prompts s JOIN tickets_test h USING (id)$$))->'accuracy'
         AS student_accuracy,
       (SELECT avg((t.label = h.label)::int) FROM teacher_labels t JOIN tickets_test h USING (id)) AS teacher_accuracy;

-- 5. The student serves the table: 16 rows decoded together, in this session, nothing sent anywhere.
SELECT r.id, r.completion AS category
FROM distill.complete_rows('ticket_student', $$SELECT id, prompt FROM student_prompts WHERE split = 'test'$$) AS r
ORDER BY r.id LIMIT 10;

-- The same in one statement: the training query may ask the teacher itself (the worker runs it as
-- you; the labels are not kept, so labelling into a table first, as above, is the better habit):
--   SELECT distill.finetune('CREATE', 'ticket_student', 'smollm2-135m',
--     $$SELECT s.prompt, distill.complete('teacher', s.prompt, '{"choices": [...]}') AS completion
--       FROM student_prompts s WHERE s.split = 'train'$$);
