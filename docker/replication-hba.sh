#!/bin/sh
# Run once by the postgres image's entrypoint when it creates the database: allow streaming
# replication connections (password-checked) so the "replica" profile can pg_basebackup.
set -e
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
