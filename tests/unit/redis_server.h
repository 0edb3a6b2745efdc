/*
 * A private redis-server for the unit tests that run Lua or commands
 * against the real thing: a mkdtemp directory, a Unix socket and no TCP
 * port, no persistence; it dies with the test (PDEATHSIG) and
 * test_redis_stop() removes the directory.
 */
#ifndef FLASHSALE_TEST_REDIS_SERVER_H
#define FLASHSALE_TEST_REDIS_SERVER_H

#include <hiredis/hiredis.h>

/*
 * Start `server` (a redis-server path) and connect to it. NULL (with a
 * message on stderr) when it cannot start. The context stays owned here.
 */
redisContext *test_redis_start(const char *server);

/* The server's Unix socket, for a second connection (a subscriber). */
const char *test_redis_socket(void);

/*
 * A second connection subscribed to channel, for a test that reads what a
 * script publishes (redisGetReply); a message that never comes fails the
 * read after 5 s instead of hanging the test. NULL when it cannot.
 */
redisContext *test_redis_subscribe(const char *channel);

/* Kill the server, free the context, remove the directory. Safe to repeat. */
void test_redis_stop(void);

/* The server of test_redis_group_setup, for the tests of the group. */
extern redisContext *test_rc;

/* cmocka group setup and teardown: the server $REDIS_SERVER names, in test_rc. */
int test_redis_group_setup(void **state);
int test_redis_group_teardown(void **state);

#endif
