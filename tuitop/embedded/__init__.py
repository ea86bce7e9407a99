"""Private servers tuitop starts itself, for the demo and the tests: a Redis
(:mod:`.redisserver`), a MariaDB (:mod:`.mariadbserver`), an SMTP server that keeps what
it receives (:mod:`.smtpserver`). Nothing of the pool's own work depends on them."""
