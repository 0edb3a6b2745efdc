/*
 * flashsale-deductor: consumes purchase intents, applies each one to Redis
 * in one atomic step (deduct.lua) and emits the ledger event it returned.
 *
 *   batch   pure bookkeeping of a batch's partitions and offsets
 *   guard   what the ledger says Redis must hold: fences a Redis gone back
 *   step    the pipelined EVALSHA of deduct.lua and its replies
 *   ledger  step result -> LedgerEvent
 *   worker  the consume/apply/produce/commit loop on its own thread
 */
#ifndef DEDUCTOR_H
#define DEDUCTOR_H

#include "batch.h"
#include "guard.h"
#include "ledger.h"
#include "step.h"
#include "worker.h"

#endif
