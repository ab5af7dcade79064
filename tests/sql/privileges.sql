-- Who may use a fine-tuned model: its owner (and members of the owner role), roles it is granted
-- to (or PUBLIC), superusers. Registry tables are private; Hub downloads need server-file rights.
\ir fixtures/tickets.psql
\set VERBOSITY default
SET client_min_messages = warning;
CREATE ROLE regress_owner IN ROLE distill_trainer;
CREATE ROLE regress_other IN ROLE distill_user;
CREATE ROLE regress_member IN ROLE regress_owner;
GRANT SELECT ON tickets_train TO regress_owner;

SET ROLE regress_owner;
SELECT distill.finetune('CREATE', 'owned', 'smollm2-135m',
       'SELECT request AS prompt, label AS completion FROM tickets_train ORDER BY id LIMIT 4', NULL,
       '{"max_epochs": 1, "target_modules": ["q"]}') AS job \gset
SELECT d->>'status' AS status FROM distill.wait(:'job') AS d;
SET distill.weight_format = 'q8_0';
SELECT length(distill.complete('owned', 'hi', '{"max_tokens": 2}')) > 0 AS owner_uses;
SELECT name, owner, granted_to FROM distill.models;

-- Another role: no access, no listing, no grants, no drops.
SET ROLE regress_other;
SELECT distill.complete('owned', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) AS visible_models FROM distill.models;
SELECT distill.grant_model('owned', 'regress_other');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.drop_model('owned');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) FROM distill.model_registry;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) FROM distill.job_registry;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) FROM distill.model_grants;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- Downloading from the Hub writes server files: not for roles without pg_write_server_files.
SELECT distill.complete('some-org/some-repo/model.gguf', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- A member of the owner role uses it like the owner.
SET ROLE regress_member;
SELECT length(distill.complete('owned', 'hi', '{"max_tokens": 2}')) > 0 AS member_uses;

-- Granting and revoking, by the owner.
SET ROLE regress_owner;
SELECT distill.grant_model('owned', 'regress_other');
SELECT distill.grant_model('owned', 'regress_other');
SELECT distill.grant_model('owned', 'no_such_role');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.grant_model('no_such_model', 'regress_other');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SET ROLE regress_other;
SELECT length(distill.complete('owned', 'hi', '{"max_tokens": 2}')) > 0 AS grantee_uses;
SELECT name, owner, granted_to FROM distill.models;
SET ROLE regress_owner;
SELECT distill.revoke_model('owned', 'regress_other');
SET ROLE regress_other;
SELECT distill.complete('owned', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- A role called "Public" is that role, not PUBLIC: a grant to it reaches its members only.
RESET ROLE;
CREATE ROLE "Public";
SET ROLE regress_owner;
SELECT distill.grant_model('owned', 'Public');
SELECT distill.grant_model('owned', 'PUBLIC');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SET ROLE regress_other;
SELECT distill.complete('owned', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) AS visible_models FROM distill.models;
SET ROLE regress_owner;
SELECT distill.revoke_model('owned', 'Public');
SELECT distill.grant_model('owned', 'public');
SET ROLE regress_other;
SELECT length(distill.complete('owned', 'hi', '{"max_tokens": 2}')) > 0 AS public_uses;
SELECT name, granted_to FROM distill.models;

-- Superusers use and drop any model; grants go with the model.
RESET ROLE;
SELECT length(distill.complete('owned', 'hi', '{"max_tokens": 2}')) > 0 AS superuser_uses;
SELECT distill.drop_model('owned');
SELECT count(*) AS grants_left FROM distill.model_grants;
REVOKE SELECT ON tickets_train FROM regress_owner;
DROP ROLE regress_member, regress_other, regress_owner, "Public";

-- Without distill_user (or distill_trainer) a role calls no model and queues no job; distill_user
-- alone does not queue jobs either.
CREATE ROLE regress_nobody;
CREATE ROLE regress_user_only IN ROLE distill_user;
SET ROLE regress_nobody;
SELECT distill.complete('smollm2-135m', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.count_tokens('smollm2-135m', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.finetune('SHOW');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) FROM distill.jobs;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.version() IS NOT NULL AS version_is_public;
SET ROLE regress_user_only;
SELECT distill.count_tokens('smollm2-135m', 'hi') AS user_counts;
SELECT distill.finetune('CREATE', 'nope', 'smollm2-135m', 'SELECT ''a'' AS prompt, ''b'' AS completion');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.import_adapter('nope', 'smollm2-135m', '\x00'::bytea);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
RESET ROLE;
DROP ROLE regress_nobody, regress_user_only;
