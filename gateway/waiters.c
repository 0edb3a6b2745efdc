#include "waiters.h"

#include <stdlib.h>
#include <string.h>

#define WAITERS_MIN_BUCKETS 1024

/* FNV-1a: ids are short, and a wake hashes one per state change. */
static uint32_t waiters_hash(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s != '\0'; s++)
		h = (h ^ (uint8_t)*s) * 16777619u;
	return h;
}

int waiters_init(struct waiters *t)
{
	t->bucket = calloc(WAITERS_MIN_BUCKETS, sizeof(*t->bucket));
	t->mask = WAITERS_MIN_BUCKETS - 1;
	t->n = 0;
	return t->bucket != NULL ? 0 : -1;
}

void waiters_free(struct waiters *t)
{
	/* The waiters belong to their requests: only unlink them. */
	for (size_t i = 0; t->bucket != NULL && i <= t->mask; i++)
		for (struct waiter *w = t->bucket[i], *next; w != NULL; w = next) {
			next = w->next;
			w->next = NULL;
			w->pprev = NULL;
		}
	free(t->bucket);
	memset(t, 0, sizeof(*t));
}

static void waiters_link(struct waiters *t, struct waiter *w)
{
	struct waiter **head = &t->bucket[w->hash & t->mask];

	w->next = *head;
	if (w->next != NULL)
		w->next->pprev = &w->next;
	w->pprev = head;
	*head = w;
}

/* Double the buckets (load above 2); on allocation failure keep the old ones. */
static void waiters_grow(struct waiters *t)
{
	size_t old = t->mask + 1;
	struct waiter **ob = t->bucket, **nb = calloc(2 * old, sizeof(*nb));

	if (nb == NULL)
		return;
	t->bucket = nb;
	t->mask = 2 * old - 1;
	for (size_t i = 0; i < old; i++)
		for (struct waiter *w = ob[i], *next; w != NULL; w = next) {
			next = w->next;
			waiters_link(t, w);
		}
	free(ob);
}

void waiters_add(struct waiters *t, struct waiter *w, const char *id)
{
	if (w->pprev != NULL)
		waiters_remove(t, w);
	if (t->n >= 2 * (t->mask + 1))
		waiters_grow(t);
	w->id = id;
	w->hash = waiters_hash(id);
	waiters_link(t, w);
	t->n++;
}

void waiters_remove(struct waiters *t, struct waiter *w)
{
	if (w->pprev == NULL)
		return;
	*w->pprev = w->next;
	if (w->next != NULL)
		w->next->pprev = w->pprev;
	w->next = NULL;
	w->pprev = NULL;
	t->n--;
}

/* Call fn on each waiter of a list detached from the table (through next). */
static size_t waiters_call(struct waiter *list, void (*fn)(struct waiter *w, void *arg),
			   void *arg)
{
	struct waiter *w, *next;
	size_t n = 0;

	for (w = list; w != NULL; w = next) {
		next = w->next;
		w->next = NULL;
		fn(w, arg);
		n++;
	}
	return n;
}

size_t waiters_wake(struct waiters *t, const char *id, void (*fn)(struct waiter *w, void *arg),
		    void *arg)
{
	uint32_t h = waiters_hash(id);
	struct waiter *w = t->bucket[h & t->mask], *next, *found = NULL;

	/* Unlink the matches first: fn may add a waiter back into this chain. */
	for (; w != NULL; w = next) {
		next = w->next;
		if (w->hash == h && strcmp(w->id, id) == 0) {
			waiters_remove(t, w);
			w->next = found;
			found = w;
		}
	}
	return waiters_call(found, fn, arg);
}

size_t waiters_wake_all(struct waiters *t, void (*fn)(struct waiter *w, void *arg), void *arg)
{
	struct waiter *all = NULL, *w, *next;

	/* Take them all out first: fn may put each back, and the table may grow. */
	for (size_t i = 0; t->bucket != NULL && i <= t->mask; i++)
		for (w = t->bucket[i]; w != NULL; w = next) {
			next = w->next;
			waiters_remove(t, w);
			w->next = all;
			all = w;
		}
	return waiters_call(all, fn, arg);
}
