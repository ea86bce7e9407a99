<?php
// tuitop reads Tuleap's own config files: /etc/tuleap/conf/local.inc, database.inc,
// then redis.inc (a later file wins). This example sets every variable
// tuitop reads, as Tuleap's administration guide shows them. Check what tuitop makes
// of a file with:  tuitop config --config config.example.php
//
// Saving the file applies the worker count, the async scope and the log level live.

// --- Redis (usually in redis.inc) --------------------------------------------------
// Host of the Redis server; '' means Redis is not configured and no worker runs.
// Prefix with tls:// to connect over TLS.
$redis_server   = '127.0.0.1';
$redis_port     = 6379;
// Sent with AUTH when not empty. A value of exactly '${NAME}' is read from the
// environment variable NAME, so the secret stays out of the file. Redis' own guide
// asks for a password of at least 30 characters (requirepass in /etc/redis.conf).
$redis_password = '${REDIS_PASSWORD}';

// --- Tuleap's database (database.inc): the queue of Tuleap >= 15.9 ------------------
// Tuleap 15.9 and later keep the queue in the database's async_events table. Each of
// these may also come from the environment: TULEAP_SYS_DBPASSWD and so on, as Tuleap
// reads them. 'localhost' means the server's unix socket, as for PHP.
$sys_dbhost   = 'localhost';
$sys_dbport   = 3306;
$sys_dbname   = 'tuleap';
$sys_dbuser   = 'tuleapadm';
$sys_dbpasswd = '${TULEAP_DB_PASSWORD}';
// '1': TLS to the database, checked against this CA; '1': check its host name too.
$sys_enablessl = '0';
$sys_db_ssl_ca = '/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem';
$sys_db_ssl_verify_cert = '0';

// Which queue tuitop serves: 'redis' (Tuleap < 15.9, as here) or 'db' (Tuleap's
// async_events). Unset, the files decide: the one configured; when both are, Tuleap's
// version (/usr/share/tuleap/VERSION): the database from 15.9.99.78 on.
$tuitop_queue = 'redis';

// --- Backend workers (local.inc) -----------------------------------------------------
// Number of workers processing background jobs; 2 is a good starting value.
// Unset means 2; 0 means none, unless $sys_async_emails below needs one.
$sys_nb_backend_workers = 2;

// Which projects' notification e-mails are sent by the workers instead of inline:
// ''    : none, every notification is sent inline (the same as not setting it)
// 'all' : every project
// 'X,Y,Z': the projects with these ids, e.g. '101,102'
$sys_async_emails = 'all';

// debug, info, warning (or warn), error. Errors are always logged.
$sys_logger_level = 'warning';

// --- Mail ----------------------------------------------------------------------------
// The From of notification mails.
$sys_noreply = '"Tuleap" <noreply@tuleap.example.com>';

// 'sendmail' pipes each mail to `sendmail -t -i`; 'smtp' sends through the relay below.
$email_transport = 'sendmail';
// host:port of the SMTP relay, used when $email_transport is 'smtp' (port 25 if left out).
$email_relayhost = '';
// 1: STARTTLS with the relay. For a relay that expects TLS from the first byte (port
// 465), set $email_relayhost_smtp_use_implicit_tls = 1 instead.
$email_relayhost_smtp_use_tls = 0;
$email_relayhost_smtp_username = '';
// Like $redis_password, '${SMTP_PASSWORD}' reads the environment variable instead.
$email_relayhost_smtp_password = '';
// plain or login
$email_relayhost_smtp_auth_type = 'plain';

// --- Lanes (tuitop's own) ------------------------------------------------------------
// Topics with workers of their own, so that notifications never wait behind long jobs:
// NAME(WORKERS): TOPIC, TOPIC ...; NAME(WORKERS): ...   (WORKERS: a count or e.g. 25%;
// topics may use * and ?). Every other topic is on the default lane, latency_10s, whose
// list is Tuleap's own app_user_events. '' means one list for all, as Tuleap has.
// Unset, this is the default:
$tuitop_lanes = 'latency_15m(1): tuleap.tracker.creation.jira, tuleap.project.create-from-archive, tuleap.mediawiki-standalone.*, tuleap.fts-meilisearch.process-pending-items-to-index, tuleap.program_management.team.synchronize, tuleap.git.repository-fork';

// Jobs killed at the time limit (15 minutes, --job-timeout) are not run again, as in
// Tuleap (a JIRA import cut short would start over on top of what it did): each is a
// dead letter at once, with why. Lanes or topics (* and ?) named here get their tries
// again instead, e.g. 'latency_10s, tuleap.fts.*'. Unset or '': none.
$tuitop_timeout_retries = '';
