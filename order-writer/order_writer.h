/*
 * flashsale-order-writer: keeps PostgreSQL true to the ledger topic.
 *
 *   batch.h   pure: ledger events -> COPY rows, next offsets -> SQL arrays
 *   store.h   the SQL: staging table and the one-transaction batch apply
 *   worker.h  the apply logic on the shared batch consumer (common/consumer.h)
 */
#ifndef FLASHSALE_ORDER_WRITER_H
#define FLASHSALE_ORDER_WRITER_H

#include "batch.h"
#include "store.h"
#include "worker.h"

#endif
