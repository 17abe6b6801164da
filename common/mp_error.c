/*
 * mp_error: names of the MP_E* codes and their mapping to gRPC status codes.
 *
 * The gRPC codes are written as plain numbers (the values of grpc_status_code
 * in grpc/status.h, which are fixed by the gRPC wire protocol) so that this
 * file never includes a gRPC header: only mp_rpc.c may.
 *
 * The mapping round-trips for every code that has a gRPC code of its own.
 * Where several MP codes share one gRPC code, the reverse gives one of them:
 *   RESOURCE_EXHAUSTED  <- ENOSPC, ENOMEM, ETOOBIG    -> ENOSPC
 *   FAILED_PRECONDITION <- ESTATE, ENOTLEADER         -> ESTATE
 *   INTERNAL            <- EIO, EPROTO, AGAIN         -> EIO
 * ENOSPC and ESTATE are what a peer most often means by those codes; the gRPC
 * glue refines FAILED_PRECONDITION to ENOTLEADER from the status details.
 * MP_AGAIN is a parser's "need more input" and must never cross a process
 * boundary; if it does it is a bug, reported as INTERNAL.
 */
#include "mp_error.h"

#include <stddef.h>

/* grpc_status_code values (grpc/status.h). */
enum {
	GRPC_OK = 0,
	GRPC_CANCELLED = 1,
	GRPC_UNKNOWN = 2,
	GRPC_INVALID_ARGUMENT = 3,
	GRPC_DEADLINE_EXCEEDED = 4,
	GRPC_NOT_FOUND = 5,
	GRPC_ALREADY_EXISTS = 6,
	GRPC_PERMISSION_DENIED = 7,
	GRPC_RESOURCE_EXHAUSTED = 8,
	GRPC_FAILED_PRECONDITION = 9,
	GRPC_ABORTED = 10,
	GRPC_OUT_OF_RANGE = 11,
	GRPC_UNIMPLEMENTED = 12,
	GRPC_INTERNAL = 13,
	GRPC_UNAVAILABLE = 14,
	GRPC_DATA_LOSS = 15,
	GRPC_UNAUTHENTICATED = 16,
};

struct mp_error_info {
	int err;
	const char *name;
	int grpc;
};

/* One row per enum mp_err value; the table is the single source of truth. */
static const struct mp_error_info mp_error_table[] = {
	{ MP_OK, "OK", GRPC_OK },
	{ MP_AGAIN, "AGAIN", GRPC_INTERNAL },
	{ MP_EINVAL, "EINVAL", GRPC_INVALID_ARGUMENT },
	{ MP_ENOENT, "ENOENT", GRPC_NOT_FOUND },
	{ MP_EEXIST, "EEXIST", GRPC_ALREADY_EXISTS },
	{ MP_ENOSPC, "ENOSPC", GRPC_RESOURCE_EXHAUSTED },
	{ MP_EIO, "EIO", GRPC_INTERNAL },
	{ MP_ENOMEM, "ENOMEM", GRPC_RESOURCE_EXHAUSTED },
	{ MP_EUNAVAIL, "EUNAVAIL", GRPC_UNAVAILABLE },
	{ MP_ETIMEDOUT, "ETIMEDOUT", GRPC_DEADLINE_EXCEEDED },
	{ MP_ENOTLEADER, "ENOTLEADER", GRPC_FAILED_PRECONDITION },
	{ MP_ESTALE, "ESTALE", GRPC_OUT_OF_RANGE },
	{ MP_ECANCELED, "ECANCELED", GRPC_CANCELLED },
	{ MP_EPERM, "EPERM", GRPC_PERMISSION_DENIED },
	{ MP_ESTATE, "ESTATE", GRPC_FAILED_PRECONDITION },
	/* A request over a configured limit (message size, command count):
	 * gRPC itself reports its own message size limit this way. */
	{ MP_ETOOBIG, "ETOOBIG", GRPC_RESOURCE_EXHAUSTED },
	{ MP_EUNIMPL, "EUNIMPL", GRPC_UNIMPLEMENTED },
	{ MP_EPROTO, "EPROTO", GRPC_INTERNAL },
};

#define MP_ERROR_COUNT (sizeof(mp_error_table) / sizeof(mp_error_table[0]))

static const struct mp_error_info *mp_error_find(int err)
{
	/* Codes are 0, -1, -2, ... so the table is indexed by -err; the check
	 * below keeps a reordered table from silently giving wrong names. */
	if (err > 0 || (unsigned)-(long)err >= MP_ERROR_COUNT)
		return NULL;
	const struct mp_error_info *e = &mp_error_table[-err];
	return e->err == err ? e : NULL;
}

const char *mp_strerror(int err)
{
	const struct mp_error_info *e = mp_error_find(err);
	return e != NULL ? e->name : "EUNKNOWN";
}

int mp_err_to_grpc(int err)
{
	const struct mp_error_info *e = mp_error_find(err);
	return e != NULL ? e->grpc : GRPC_UNKNOWN;
}

int mp_err_from_grpc(int grpc_status)
{
	switch (grpc_status) {
	case GRPC_OK:
		return MP_OK;
	case GRPC_CANCELLED:
		return MP_ECANCELED;
	case GRPC_INVALID_ARGUMENT:
		return MP_EINVAL;
	case GRPC_DEADLINE_EXCEEDED:
		return MP_ETIMEDOUT;
	case GRPC_NOT_FOUND:
		return MP_ENOENT;
	case GRPC_ALREADY_EXISTS:
		return MP_EEXIST;
	case GRPC_PERMISSION_DENIED:
	case GRPC_UNAUTHENTICATED:
		return MP_EPERM;
	case GRPC_RESOURCE_EXHAUSTED:
		return MP_ENOSPC;
	case GRPC_FAILED_PRECONDITION:
		return MP_ESTATE;
	case GRPC_ABORTED:
		/* gRPC: "retry at a higher level", i.e. try again later. */
		return MP_EUNAVAIL;
	case GRPC_OUT_OF_RANGE:
		return MP_ESTALE;
	case GRPC_UNIMPLEMENTED:
		return MP_EUNIMPL;
	case GRPC_UNAVAILABLE:
		return MP_EUNAVAIL;
	case GRPC_UNKNOWN:
	case GRPC_INTERNAL:
	case GRPC_DATA_LOSS:
	default:
		/* Anything we cannot name is a failure of the far side. */
		return MP_EIO;
	}
}
