# Sourced by the scripts that build pg_distill (install_extension.sh, test.sh), from the repository
# root. Builds go through a private copy of the PostgreSQL installation (target/pg-private, made once
# per PostgreSQL version) and a private PGRX_HOME that names it:
# - `cargo pgrx test` installs its test build (with the pg_test functions) there, never over the
#   system's files, which a running server may have mapped;
# - every build (test or real) sees the same pg_config path, so cargo does not rebuild pgrx's
#   bindings each time one follows the other.
# A PostgreSQL installation is relocatable: its pg_config and postgres find lib/ and share/ relative to
# bin/, so a copied tree works where it is. Exports PGRX_HOME and PRIVATE_PG_CONFIG, PRIVATE_PREFIX.
PG_MAJOR=${PG_MAJOR:-15}
PRIVATE_PREFIX=$PWD/target/pg-private
PRIVATE_PG_CONFIG=$PRIVATE_PREFIX/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
export PGRX_HOME=$PWD/target/pgrx-home
system_pg_config=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
stamp=$PRIVATE_PREFIX/.made-from
if [ "$(cat "$stamp" 2>/dev/null)" != "$("$system_pg_config" --version)" ]; then
  rm -rf "$PRIVATE_PREFIX" && mkdir -p "$PRIVATE_PREFIX/usr/lib/postgresql" "$PRIVATE_PREFIX/usr/share/postgresql" \
    "$PRIVATE_PREFIX/usr/include"
  # Copies, not hard links: pgrx writes its files in place, which through a link would write the system's.
  cp -a "/usr/lib/postgresql/$PG_MAJOR" "$PRIVATE_PREFIX/usr/lib/postgresql/"
  cp -a "/usr/share/postgresql/$PG_MAJOR" "$PRIVATE_PREFIX/usr/share/postgresql/"
  cp -a /usr/include/postgresql "$PRIVATE_PREFIX/usr/include/"
  rm -f "$PRIVATE_PREFIX/usr/lib/postgresql/$PG_MAJOR/lib/pg_distill.so" \
        "$PRIVATE_PREFIX/usr/share/postgresql/$PG_MAJOR/extension/pg_distill"*
  # Models are only read: the private tree uses the system's directory.
  rm -rf "$PRIVATE_PREFIX/usr/share/postgresql/$PG_MAJOR/pg_distill"
  mkdir -p "$PRIVATE_PREFIX/usr/share/postgresql/$PG_MAJOR/pg_distill"
  ln -s "/usr/share/postgresql/$PG_MAJOR/pg_distill/models" "$PRIVATE_PREFIX/usr/share/postgresql/$PG_MAJOR/pg_distill/models"
  "$system_pg_config" --version >"$stamp"
fi
if ! grep -qs "$PRIVATE_PG_CONFIG" "$PGRX_HOME/config.toml"; then
  mkdir -p "$PGRX_HOME"
  cargo pgrx init --pg$PG_MAJOR "$PRIVATE_PG_CONFIG" >/dev/null
fi
