#!/bin/sh
# First start of the timescaledb container only (docker-entrypoint-initdb.d): create the
# databases of the other tenants of this server, owned by $POSTGRES_USER. The AWET database
# ($POSTGRES_DB) is created by the image; `awet infra up` (init) migrates it.
set -eu
for db in ${AWET_EXTRA_DATABASES:-}; do
  echo "creating database $db"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
done
