/*
 * flashsale-deductor: consumes purchase intents, applies each one to Redis
 * in one atomic step (deduct.lua) and emits the ledger event it returned.
 *
 *   guard   what the ledger says Redis must hold: fences a Redis gone back
 *   step    the pipelined EVALSHA of deduct.lua and its replies
 *   ledger  step result -> LedgerEvent
 *   worker  the apply logic on the shared batch consumer (common/consumer.h)
 */
#ifndef FLASHSALE_DEDUCTOR_H
#define FLASHSALE_DEDUCTOR_H

#include "guard.h"
#include "ledger.h"
#include "step.h"
#include "worker.h"

#endif
