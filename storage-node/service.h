/*
 * service: the MailStore gRPC service of a storage node — a table from
 * method to store operation, and the Watch streams fed by the store's
 * change notifications. Knows no protocol but the MailStore API.
 */
#ifndef SERVICE_H
#define SERVICE_H

#include <stddef.h>

#include "mp_rpc.h"
#include "store.h"

struct service;

int service_create(struct store *st, struct service **svc_r);
/* The method table for mp_rpc_server_start (ctx: the service). */
const struct mp_rpc_method *service_methods(size_t *n_r);
/* After the RPC server has stopped and the store is closed (no more
 * notifications): releases the watch streams. */
void service_free(struct service **svc);

#endif
