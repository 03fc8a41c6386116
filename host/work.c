#include "work.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "log.h"
#include "loop.h"
#include "util.h"

struct job {
	mb_fn work, done;
	void *ud;
	struct job *next;
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *head, *tail;
	pthread_t *threads;
	unsigned nthreads;
	unsigned pending; /* queued + running */
	bool stopping;
} W = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

static void job_done(void *p)
{
	struct job *j = p;
	pthread_mutex_lock(&W.lock);
	W.pending--;
	pthread_mutex_unlock(&W.lock);
	if (j->done)
		j->done(j->ud);
	free(j);
}

static void *worker_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&W.lock);
	for (;;) {
		while (!W.head && !W.stopping)
			pthread_cond_wait(&W.cond, &W.lock);
		if (!W.head)
			break; /* stopping and nothing left */
		struct job *j = W.head;
		W.head = j->next;
		if (!W.head)
			W.tail = NULL;
		pthread_mutex_unlock(&W.lock);
		j->work(j->ud);
		loop_post(job_done, j);
		pthread_mutex_lock(&W.lock);
	}
	pthread_mutex_unlock(&W.lock);
	return NULL;
}

int work_init(unsigned nthreads, mb_err *err)
{
	if (nthreads == 0)
		nthreads = 2;
	W.threads = xcalloc(nthreads, sizeof(*W.threads));
	W.stopping = false;
	for (unsigned i = 0; i < nthreads; i++) {
		int r = pthread_create(&W.threads[i], NULL, worker_main, NULL);
		if (r != 0) {
			W.nthreads = i;
			work_fini();
			return mb_err_set(err, -r, "pthread_create: %s", strerror(r));
		}
	}
	W.nthreads = nthreads;
	return 0;
}

void work_fini(void)
{
	pthread_mutex_lock(&W.lock);
	W.stopping = true;
	pthread_cond_broadcast(&W.cond);
	pthread_mutex_unlock(&W.lock);
	for (unsigned i = 0; i < W.nthreads; i++)
		pthread_join(W.threads[i], NULL);
	free(W.threads);
	W.threads = NULL;
	W.nthreads = 0;
}

int work_submit(mb_fn work, mb_fn done, void *ud, mb_err *err)
{
	if (!W.nthreads)
		return mb_err_set(err, -ESHUTDOWN, "worker pool is not running");
	struct job *j = xcalloc(1, sizeof(*j));
	j->work = work;
	j->done = done;
	j->ud = ud;
	pthread_mutex_lock(&W.lock);
	if (W.tail)
		W.tail->next = j;
	else
		W.head = j;
	W.tail = j;
	W.pending++;
	pthread_cond_signal(&W.cond);
	pthread_mutex_unlock(&W.lock);
	return 0;
}

unsigned work_pending(void)
{
	pthread_mutex_lock(&W.lock);
	unsigned n = W.pending;
	pthread_mutex_unlock(&W.lock);
	return n;
}
