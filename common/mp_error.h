/*
 * mp_error: the one error enum of Merpati.
 *
 * Functions return 0 (MP_OK) or a negative MP_E* code. The gRPC glue maps
 * each code to one gRPC status code and back, so an error keeps its meaning
 * across a process boundary. Parsers may also return MP_AGAIN (need more
 * input). Never return a positive value for an error.
 */
#ifndef MP_ERROR_H
#define MP_ERROR_H

enum mp_err {
	MP_OK = 0,
	MP_AGAIN = -1,        /* parser: need more input */
	MP_EINVAL = -2,       /* bad argument or request (INVALID_ARGUMENT) */
	MP_ENOENT = -3,       /* no such user, mailbox, message (NOT_FOUND) */
	MP_EEXIST = -4,       /* already exists (ALREADY_EXISTS) */
	MP_ENOSPC = -5,       /* over quota or a size limit (RESOURCE_EXHAUSTED) */
	MP_EIO = -6,          /* storage failed (INTERNAL) */
	MP_ENOMEM = -7,       /* allocation failed (RESOURCE_EXHAUSTED) */
	MP_EUNAVAIL = -8,     /* try again later (UNAVAILABLE) */
	MP_ETIMEDOUT = -9,    /* deadline passed (DEADLINE_EXCEEDED) */
	MP_ENOTLEADER = -10,  /* not the shard's leader (FAILED_PRECONDITION + detail) */
	MP_ESTALE = -11,      /* stale epoch/modseq, trimmed history (OUT_OF_RANGE) */
	MP_ECANCELED = -12,   /* call cancelled (CANCELLED) */
	MP_EPERM = -13,       /* not allowed (PERMISSION_DENIED) */
	MP_ESTATE = -14,      /* wrong state for this (FAILED_PRECONDITION) */
	MP_ETOOBIG = -15,     /* over a configured limit (RESOURCE_EXHAUSTED) */
	MP_EUNIMPL = -16,     /* not implemented (UNIMPLEMENTED) */
	MP_EPROTO = -17,      /* peer broke the protocol (INTERNAL) */
};

/* A short stable name ("EINVAL", ...) for logs and CLI messages. */
const char *mp_strerror(int err);

/* gRPC status code (numeric, as in grpc/status.h) for an MP_E* code, and the
 * reverse. Kept as plain ints so this header needs no gRPC include. */
int mp_err_to_grpc(int err);
int mp_err_from_grpc(int grpc_status);

#endif
