-- The ticket workflow of the Snowflake Cortex fine-tuning quickstart, on the default base model.
-- Run by scripts/demo.sh; \getenv needs psql 15+.
\set ON_ERROR_STOP on
\getenv datadir DISTILL_DATA
\set tickets_csv :datadir '/all_with_original_columns.csv'

CREATE EXTENSION IF NOT EXISTS pg_distill;

DROP TABLE IF EXISTS support_tickets;
CREATE TABLE support_tickets (
    id text, ticket_id text, customer_name text, customer_email text, service_type text,
    request text, contact_preference text, label text
);
COPY support_tickets FROM :'tickets_csv' WITH (FORMAT csv, HEADER true);

-- The quickstart's instruction, one row per ticket.
CREATE OR REPLACE VIEW ticket_prompts AS
SELECT ticket_id, request, label,
       'You are an agent that helps organize requests that come to our support team. '
       || 'The request category is the reason why the customer reached out. These are the possible types of '
       || 'request categories: Roaming fees, Slow data speed, Lost phone, Add new line, Closing account. '
       || E'Return only the request category.\nRequest: ' || request AS prompt
FROM support_tickets;

\timing on
SELECT ticket_id,
       left(request, 60) || '...' AS request,
       distill.complete('smollm2-135m', prompt, '{"max_tokens": 12}') AS predicted,
       label AS keyword_label
FROM ticket_prompts
ORDER BY ticket_id
LIMIT 12;
\timing off
