/* The event loop: timers, deferred calls, posts from other threads, fd watches. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "loop.h"
#include "work.h"

static int setup(void **state)
{
	return loop_init(NULL);
}

static int teardown(void **state)
{
	loop_fini();
	return 0;
}

static char order[32];
static int norder;

static void record(void *ud)
{
	order[norder++] = (char)(uintptr_t)ud;
	order[norder] = '\0';
}

static void stop_loop(void *ud)
{
	loop_stop();
}

static void timers_fire_in_deadline_order(void **state)
{
	norder = 0;
	order[0] = '\0';
	loop_timer(30, record, (void *)'c');
	loop_timer(10, record, (void *)'a');
	mb_timer *t = loop_timer(15, record, (void *)'x');
	loop_timer(20, record, (void *)'b');
	loop_timer(20, record, (void *)'B'); /* same deadline: FIFO */
	loop_timer_stop(t);
	loop_timer(50, stop_loop, NULL);
	loop_run();
	assert_string_equal(order, "abBc");
	unsigned w, n;
	loop_counts(&w, &n);
	assert_int_equal(n, 0);
}

static void deferred_calls_run_in_order(void **state)
{
	norder = 0;
	order[0] = '\0';
	loop_defer(record, (void *)'1');
	loop_defer(record, (void *)'2');
	loop_defer(stop_loop, NULL);
	loop_run();
	assert_string_equal(order, "12");
}

static int posted;

static void count_post(void *ud)
{
	posted++;
}

static void *poster(void *arg)
{
	for (int i = 0; i < 100; i++)
		loop_post(count_post, NULL);
	loop_post(stop_loop, NULL);
	return NULL;
}

static void posts_from_threads_arrive(void **state)
{
	pthread_t th;
	posted = 0;
	pthread_create(&th, NULL, poster, NULL);
	loop_run();
	pthread_join(th, NULL);
	assert_int_equal(posted, 100);
}

static int reads;

static void on_read(int fd, uint32_t ev, void *ud)
{
	char c;
	if (read(fd, &c, 1) == 1)
		reads++;
	if (reads == 3) {
		loop_unwatch(ud ? *(mb_watch **)ud : NULL); /* unwatch from inside its callback */
		loop_stop();
	}
}

static void fd_watch_and_unwatch_inside_callback(void **state)
{
	int p[2];
	assert_int_equal(pipe(p), 0);
	static mb_watch *w;
	reads = 0;
	w = loop_watch(p[0], EPOLLIN, on_read, &w, NULL);
	assert_non_null(w);
	assert_int_equal(write(p[1], "abc", 3), 3);
	loop_run();
	assert_int_equal(reads, 3);
	close(p[0]);
	close(p[1]);
}

static int work_ran, done_ran;

static void job(void *ud)
{
	__atomic_add_fetch(&work_ran, 1, __ATOMIC_SEQ_CST);
}

static void job_done(void *ud)
{
	if (++done_ran == 20)
		loop_stop();
}

static void worker_completions_come_back_to_the_loop(void **state)
{
	assert_int_equal(work_init(2, NULL), 0);
	work_ran = done_ran = 0;
	for (int i = 0; i < 20; i++)
		assert_int_equal(work_submit(job, job_done, NULL, NULL), 0);
	loop_run();
	assert_int_equal(work_ran, 20);
	assert_int_equal(done_ran, 20);
	work_fini();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(timers_fire_in_deadline_order, setup, teardown),
		cmocka_unit_test_setup_teardown(deferred_calls_run_in_order, setup, teardown),
		cmocka_unit_test_setup_teardown(posts_from_threads_arrive, setup, teardown),
		cmocka_unit_test_setup_teardown(fd_watch_and_unwatch_inside_callback, setup,
		                                teardown),
		cmocka_unit_test_setup_teardown(worker_completions_come_back_to_the_loop, setup,
		                                teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
