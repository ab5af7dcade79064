-- The ticket workflow of the Snowflake Cortex fine-tuning quickstart, on the default base model.
-- Run by scripts/demo.sh; \getenv needs psql 15+.
\set ON_ERROR_STOP on
\getenv datadir DISTILL_DATA
\set tickets_csv :datadir '/all_with_original_columns.csv'

CREATE EXTENSION IF NOT EXISTS pg_distill;

DROP TABLE IF EXISTS support_tickets CASCADE;
CREATE TABLE support_tickets (
    id text, ticket_id text, customer_name text, customer_email text, service_type text,
    request text, contact_preference text, label text
);
COPY support_tickets FROM :'tickets_csv' WITH (FORMAT csv, HEADER true);

-- One instruction per ticket, asking for one of the quickstart's five categories.
CREATE OR REPLACE VIEW ticket_prompts AS
SELECT ticket_id, request, label,
       'Classify this support ticket into one of: Roaming fees, Slow data speed, Lost phone, '
       || E'Add new line, Closing account. Reply with the category only.\nTicket: ' || request AS prompt
FROM support_tickets;

-- Q8_0 weights: about 4x faster than the file's Q4_1 on CPUs (see README, Performance).
SET distill.weight_format = 'q8_0';
\timing on
CREATE TEMP TABLE predictions AS
SELECT ticket_id, request, label,
       distill.complete('smollm2-135m', prompt, '{"max_tokens": 16}') AS predicted
FROM ticket_prompts
ORDER BY ticket_id
LIMIT 12;
\timing off

SELECT ticket_id, left(request, 50) || '...' AS request, predicted, label AS keyword_label
FROM predictions ORDER BY ticket_id;

-- The base model, untuned, often picks the wrong category: this is what fine-tuning is for.
SELECT count(*) FILTER (WHERE predicted ILIKE '%' || label || '%') AS mentions_right_label, count(*) AS tickets
FROM predictions;
