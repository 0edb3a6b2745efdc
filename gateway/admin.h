/*
 * The admin API: POST /admin/promotions creates a promotion; POST
 * /admin/promotions/{sku}/limits sets its funnel limits. The bearer
 * token is checked first; then PostgreSQL, the durable record, then Redis
 * (gateway/promo_load.lua), then the promotion cache. Repeating a request
 * is safe: 201 when this call made the promotion exist anywhere (a retry
 * after a Redis failure too), 200 when it existed already, 409 when a
 * different promotion exists for the SKU.
 */
#ifndef FLASHSALE_GATEWAY_ADMIN_H
#define FLASHSALE_GATEWAY_ADMIN_H

struct gateway;
struct evhttp_request;

/* gateway/promo_load.lua, embedded at build time (common/embed.py). */
extern const char gw_promo_load_lua[];

/*
 * Handle POST /admin/promotions (sku NULL), or POST
 * /admin/promotions/{sku}/limits: a promotion's funnel limits, PostgreSQL
 * first (a rebuild restores them from there), then fs:cfg:<sku>, which
 * every gateway reads at its next refresh. The method is already checked.
 */
void admin_handle(struct gateway *gw, struct evhttp_request *req, const char *sku);

#endif
