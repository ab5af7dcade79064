# Sourced by the tests that need a cluster of their own (dump_restore.sh, faults.sh, concurrency.sh,
# security.sh, replica.sh, concurrent_jobs.sh) and by bench/shared_weights.sh.
# With $work, $port and $db set: a fresh cluster in $work/data whose fine-tuning jobs run in $db,
# stopped when the test exits; $db holds pg_distill and the training tickets in table `tickets`.
# psql_db DB ARGS... and psql_in ARGS... (in $db) run psql as postgres, quiet, unaligned, stopping on errors.
# small_job NAME queues a quick fine-tuning job (16 tickets, 1 epoch, q and v) and prints its id;
# train_small NAME runs one to the end and prints its final status.
source scripts/fresh_cluster.sh
cp data/support_tickets/train.csv "$work/train.csv" && chown postgres "$work/train.csv"
psql_in -c "CREATE EXTENSION pg_distill" -c "CREATE TABLE tickets (id text, request text, label text)" \
        -c "COPY tickets FROM '$work/train.csv' WITH (FORMAT csv, HEADER true)"
small_job() {
  psql_in -c "SELECT distill.finetune('CREATE', '$1', 'smollm2-135m',
      'SELECT request AS prompt, label AS completion FROM tickets ORDER BY id LIMIT 16', NULL,
      '{\"max_epochs\": 1, \"target_modules\": [\"q\", \"v\"], \"learning_rate\": 0.005}')"
}
train_small() { psql_in -c "SET client_min_messages = warning" -c "SELECT distill.wait('$(small_job "$1")')->>'status'"; }
