#!/bin/sh
# Runs once, when the postgres image initialises an empty data volume (/docker-entrypoint-initdb.d/): the app's
# role, never a superuser, with the generated password from the container's environment (.env.secrets), and
# its database. The image's superuser is `postgres` (POSTGRES_ADMIN_PASSWORD). Nothing here is on a command line.
set -eu
psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres <<SQL
\set role '$APP_DB_USER'
\set db '$APP_DB_NAME'
\set password '$APP_DB_PASSWORD'
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
