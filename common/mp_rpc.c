/*
 * mp_rpc: the gRPC C core glue (see mp_rpc.h for the contract).
 *
 * Server: one completion queue per server thread, every method of the
 * service registered with its first message read by gRPC, and a fixed
 * number of pre-posted request slots per (thread, method), each re-posted as
 * soon as it delivers a call. A call's batches complete on the queue of the
 * thread whose slot took it, so its handler, its completions and its
 * on_close all run on that thread; replies and stream sends may be started
 * from any thread (each call has a mutex for that).
 *
 * Client: channels, a blocking unary call on a private queue, asynchronous
 * unary calls and server streams on a queue drained by one completion
 * thread, and a blocking server-streaming reader on a private queue.
 *
 * Must never: block a server thread on anything but its completion queue;
 * let a grpc_call, a request slot or a queued batch outlive the server that
 * owns it (mp_rpc_server_stop waits for every one of them); start two
 * batches of the same op type on one call; log request contents.
 */
#include "mp_rpc.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/status.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include "mp_error.h"
#include "mp_log.h"

#define CONTAINER_OF(ptr, type, member) \
	((type *)(void *)((char *)(ptr) - offsetof(type, member)))

#define RPC_DEFAULT_THREADS 2
#define RPC_DEFAULT_SLOTS 16
/* Slots per thread for paths we do not serve: only to answer them. */
#define RPC_UNKNOWN_SLOTS 2
#define RPC_DEFAULT_CALL_TIMEOUT_MS 30000
/* A restarted peer is found again within this: gRPC's default backoff grows
 * to 120 s, far too long for nodes on one LAN. */
#define RPC_RECONNECT_INITIAL_MS 100
#define RPC_RECONNECT_MAX_MS 1000
#define RPC_CONNECT_TIMEOUT_MS 2000
/* mp_rpc_server_stop logs who it is still waiting for at this interval. */
#define RPC_STOP_LOG_INTERVAL_S 5

/* Every completion-queue tag is a struct rpc_tag embedded in its owner, so
 * one dispatcher knows what finished. */
enum rpc_tag_kind {
	TAG_SLOT,        /* a request slot delivered a call (or died) */
	TAG_CALL_REPLY,  /* unary reply batch, or a stream's status batch */
	TAG_CALL_SEND,   /* a stream's initial metadata or message was sent */
	TAG_CALL_CLOSE,  /* RECV_CLOSE_ON_SERVER: the call is over */
	TAG_SHUTDOWN,    /* grpc_server_shutdown_and_notify */
	TAG_STREAM_OPEN, /* client stream: request sent, headers received */
	TAG_STREAM_RECV, /* client stream: RECV_MESSAGE */
	TAG_STREAM_STATUS, /* client stream: RECV_STATUS_ON_CLIENT */
	TAG_ASYNC_UNARY,  /* mp_rpc_cq: an asynchronous unary call is done */
	TAG_ASTREAM_MAIN, /* mp_rpc_cq stream: request sent, status received */
	TAG_ASTREAM_RECV, /* mp_rpc_cq stream: RECV_MESSAGE */
};

struct rpc_tag {
	enum rpc_tag_kind kind;
};

/* ------------------------------------------------------------ helpers */

static void rpc_log_func(gpr_log_func_args *args)
{
	enum mp_log_level level;
	const char *file, *msg;
	char quoted[1024];

	switch (args->severity) {
	case GPR_LOG_SEVERITY_DEBUG:
		level = MP_LOG_DEBUG;
		break;
	case GPR_LOG_SEVERITY_INFO:
		level = MP_LOG_INFO;
		break;
	default:
		level = MP_LOG_ERROR;
		break;
	}
	file = args->file != NULL ? strrchr(args->file, '/') : NULL;
	file = file != NULL ? file + 1 : (args->file != NULL ? args->file : "?");
	msg = args->message != NULL ? args->message : "";
	mp_log(level, "grpc", "src=%s:%d msg=%s", file, args->line,
	       mp_log_quote(quoted, sizeof(quoted), msg, strlen(msg)));
}

void mp_rpc_init(void)
{
	/* Before grpc_init so even its first lines go through mp_log. */
	gpr_set_log_function(rpc_log_func);
	grpc_init();
}

void mp_rpc_shutdown(void)
{
	grpc_shutdown();
}

static void rpc_set_error(char **error_r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void rpc_set_error(char **error_r, const char *fmt, ...)
{
	va_list ap;

	if (error_r == NULL)
		return;
	va_start(ap, fmt);
	if (vasprintf(error_r, fmt, ap) < 0)
		*error_r = NULL;
	va_end(ap);
}

static gpr_timespec rpc_deadline_ms(int64_t ms)
{
	return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
			    gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static int rpc_int_arg(size_t v)
{
	return v > INT_MAX ? INT_MAX : (int)v;
}

/* MP_ENOTLEADER shares FAILED_PRECONDITION with MP_ESTATE (mp_error.c);
 * this prefix of the status details tells them apart on the far side. */
#define RPC_NOT_LEADER_TAG "not-leader"

/* The status details a server sends for err and message. */
static grpc_slice rpc_status_details(int err, const char *message)
{
	grpc_slice s;
	char *text;

	if (err == MP_ENOTLEADER) {
		if (asprintf(&text, "%s: %s", RPC_NOT_LEADER_TAG,
			     message != NULL ? message : "not the leader") < 0)
			return grpc_slice_from_static_string(RPC_NOT_LEADER_TAG);
		s = grpc_slice_from_copied_string(text);
		free(text);
		return s;
	}
	return message != NULL ? grpc_slice_from_copied_string(message)
			       : grpc_empty_slice();
}

/* A client's view of a non-OK status: the MP_E* code and, in *error_r,
 * the server's message (malloc'd; NULL when there was none). */
static int rpc_status_err(grpc_status_code status, grpc_slice details,
			  char **error_r)
{
	const char *p = (const char *)GRPC_SLICE_START_PTR(details);
	size_t len = GRPC_SLICE_LENGTH(details);
	size_t tl = strlen(RPC_NOT_LEADER_TAG);
	int err = mp_err_from_grpc(status);

	if (err >= 0)
		err = MP_EIO;
	if (status == GRPC_STATUS_FAILED_PRECONDITION && len >= tl &&
	    memcmp(p, RPC_NOT_LEADER_TAG, tl) == 0 &&
	    (len == tl || p[tl] == ':')) {
		err = MP_ENOTLEADER;
		p += tl;
		len -= tl;
		if (len >= 2 && p[0] == ':' && p[1] == ' ') {
			p += 2;
			len -= 2;
		}
	}
	if (error_r != NULL)
		*error_r = len > 0 ? strndup(p, len) : NULL;
	return err;
}

int mp_pb_pack(const ProtobufCMessage *msg, uint8_t **out_r, size_t *len_r)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	uint8_t *buf = malloc(len > 0 ? len : 1);

	if (buf == NULL)
		return MP_ENOMEM;
	if (protobuf_c_message_pack(msg, buf) != len) {
		free(buf);
		return MP_EPROTO;
	}
	*out_r = buf;
	*len_r = len;
	return 0;
}

int mp_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
		 size_t len, ProtobufCMessage **msg_r)
{
	static const uint8_t empty[1];
	ProtobufCMessage *msg;

	msg = protobuf_c_message_unpack(desc, NULL, len,
					data != NULL ? data : empty);
	if (msg == NULL)
		return MP_EPROTO;
	*msg_r = msg;
	return 0;
}

/* Packs straight into one gRPC slice: a 50 MB message is not copied again. */
static int rpc_pack_bb(const ProtobufCMessage *msg, grpc_byte_buffer **bb_r)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	grpc_slice s = grpc_slice_malloc(len);

	if (protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s)) != len) {
		grpc_slice_unref(s);
		return MP_EPROTO;
	}
	/* The byte buffer takes its own reference. */
	*bb_r = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	return 0;
}

/* readall rather than the first slice: the buffer may be in pieces, or
 * compressed. */
static int rpc_unpack_bb(grpc_byte_buffer *bb,
			 const ProtobufCMessageDescriptor *desc,
			 ProtobufCMessage **msg_r)
{
	grpc_byte_buffer_reader reader;
	grpc_slice s;
	int ret;

	if (!grpc_byte_buffer_reader_init(&reader, bb))
		return MP_EPROTO;
	s = grpc_byte_buffer_reader_readall(&reader);
	grpc_byte_buffer_reader_destroy(&reader);
	ret = mp_pb_unpack(desc, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s),
			   msg_r);
	grpc_slice_unref(s);
	return ret;
}

const char *mp_rpc_method_path(const ProtobufCServiceDescriptor *svc,
			       const char *method, char *out, size_t outlen)
{
	int n;

	if (svc == NULL || method == NULL || out == NULL)
		return NULL;
	for (unsigned i = 0; i < svc->n_methods; i++) {
		if (strcmp(svc->methods[i].name, method) != 0)
			continue;
		n = snprintf(out, outlen, "/%s/%s", svc->name, method);
		if (n < 0 || (size_t)n >= outlen)
			return NULL;
		return out;
	}
	return NULL;
}

/* ------------------------------------------------------------- server */

struct srv_method {
	const ProtobufCMethodDescriptor *desc; /* borrowed from the service */
	mp_rpc_handler handler;
	void *ctx;        /* borrowed: the service's context */
	int server_streaming;
	char *path;       /* owned: "/merpati.v1.MailStore/Append" */
	void *registered; /* gRPC's handle; lives with the server */
};

struct srv_thread {
	struct mp_rpc_server *srv; /* borrowed */
	grpc_completion_queue *cq; /* owned */
	pthread_t tid;
	bool running;
};

/* A pre-posted request for one registered method, or (method NULL) for any
 * other path, which is answered UNIMPLEMENTED rather than left queued in
 * gRPC until the client's deadline. */
struct srv_slot {
	struct rpc_tag tag;
	struct srv_thread *thr;    /* borrowed */
	struct srv_method *method; /* borrowed; NULL: unregistered paths */
	/* Filled in by gRPC when the slot delivers a call. */
	grpc_call *call;
	gpr_timespec deadline;
	grpc_metadata_array md;
	grpc_byte_buffer *payload;
	grpc_call_details details;  /* unregistered paths only */
};

struct mp_rpc_server {
	grpc_server *server;               /* owned */
	grpc_completion_queue *shutdown_cq; /* owned; only the stopper polls it */
	struct rpc_tag shutdown_tag;
	struct srv_method *methods;        /* owned, svc->n_methods */
	size_t n_methods;
	struct srv_thread *threads;        /* owned */
	int n_threads;
	int slots;
	void *ctx;                         /* borrowed, handed to handlers */
	int port;
	atomic_bool stopping;

	pthread_mutex_t mu;
	pthread_cond_t cond;
	/* Posted slots plus calls whose grpc_call is still ours. The queues
	 * are shut down only once this is 0, so nothing is ever started on a
	 * dead queue. */
	size_t outstanding;
};

struct stream_msg {
	struct stream_msg *next;
	grpc_byte_buffer *bb; /* owned */
};

struct mp_rpc_call {
	struct rpc_tag reply_tag;
	struct rpc_tag send_tag;
	struct rpc_tag close_tag;
	struct mp_rpc_server *srv;       /* borrowed; NULL once grpc is done */
	const struct srv_method *method; /* borrowed */
	grpc_call *gcall;                /* owned reference until grpc is done */
	ProtobufCMessage *req;           /* owned */
	char *peer;                      /* owned */

	pthread_mutex_t mu;
	/* The owner (handler until mp_rpc_reply, or the stream's owner until
	 * mp_rpc_stream_release) holds one; each batch in flight holds one. */
	int refs;
	bool replied;      /* unary reply started (no stream possible) */
	bool streaming;    /* mp_rpc_stream_start ran */
	bool grpc_done;    /* gcall unreffed and the server told */
	bool reply_busy;   /* reply batch or stream status batch in flight */
	bool send_busy;    /* stream SEND_INITIAL_METADATA/SEND_MESSAGE */
	bool close_busy;   /* stream RECV_CLOSE_ON_SERVER */
	bool closed;       /* RECV_CLOSE_ON_SERVER completed */
	bool broken;       /* a send failed: send nothing more */
	bool finishing;    /* mp_rpc_stream_finish ran */
	bool status_started;
	int close_cancelled;            /* RECV_CLOSE_ON_SERVER output */
	grpc_byte_buffer *reply_bb;     /* owned while the reply batch runs */
	grpc_byte_buffer *send_bb;      /* owned while the send batch runs */
	struct stream_msg *q_head, *q_tail; /* owned, waiting to be sent */
	size_t queued, max_queue;
	int fin_err;
	grpc_status_code fin_status;
	char *fin_msg;                  /* owned */
	mp_rpc_close_cb on_close;
	void *on_close_arg;
};

static void srv_dispatch(struct srv_thread *thr, struct rpc_tag *tag, int ok);

static void srv_outstanding_add(struct mp_rpc_server *srv, int delta)
{
	pthread_mutex_lock(&srv->mu);
	if (delta < 0)
		srv->outstanding -= (size_t)-delta;
	else
		srv->outstanding += (size_t)delta;
	if (srv->outstanding == 0)
		pthread_cond_broadcast(&srv->cond);
	pthread_mutex_unlock(&srv->mu);
}

const char *mp_rpc_call_peer(const struct mp_rpc_call *call)
{
	return call->peer != NULL ? call->peer : "unknown";
}

/* For logs: the method, or "unknown" for a path we do not serve. */
static const char *call_name(const struct mp_rpc_call *call)
{
	return call->method != NULL ? call->method->desc->name : "unknown";
}

static void call_free(struct mp_rpc_call *call)
{
	struct stream_msg *m, *next;

	for (m = call->q_head; m != NULL; m = next) {
		next = m->next;
		grpc_byte_buffer_destroy(m->bb);
		free(m);
	}
	if (call->req != NULL)
		protobuf_c_message_free_unpacked(call->req, NULL);
	free(call->peer);
	free(call->fin_msg);
	pthread_mutex_destroy(&call->mu);
	free(call);
}

/* Called with call->mu held. True exactly once: when no batch of the call
 * is in flight any more and none can be started, so the grpc_call can go.
 * Fills *gcall_r and *srv_r for call_grpc_release(), which runs unlocked. */
static bool call_grpc_done_locked(struct mp_rpc_call *call,
				  grpc_call **gcall_r,
				  struct mp_rpc_server **srv_r)
{
	bool done;

	if (call->grpc_done)
		return false;
	if (call->streaming)
		done = call->closed && !call->send_busy && !call->reply_busy;
	else
		done = call->replied && !call->reply_busy;
	if (!done)
		return false;
	call->grpc_done = true;
	*gcall_r = call->gcall;
	*srv_r = call->srv;
	call->gcall = NULL;
	call->srv = NULL;
	return true;
}

/* Last use of the server by this call: after the count drops,
 * mp_rpc_server_stop may free the server. */
static void call_grpc_release(grpc_call *gcall, struct mp_rpc_server *srv)
{
	grpc_call_unref(gcall);
	srv_outstanding_add(srv, -1);
}

/* Drops one reference (mu held on entry, released here), releasing the
 * grpc side first if it just finished. */
static void call_unref_unlock(struct mp_rpc_call *call)
{
	grpc_call *gcall = NULL;
	struct mp_rpc_server *srv = NULL;
	bool release, last;

	release = call_grpc_done_locked(call, &gcall, &srv);
	last = --call->refs == 0;
	pthread_mutex_unlock(&call->mu);
	if (release)
		call_grpc_release(gcall, srv);
	if (last)
		call_free(call);
}

void mp_rpc_reply(struct mp_rpc_call *call, const ProtobufCMessage *resp,
		  int err, const char *message)
{
	grpc_byte_buffer *bb = NULL;
	grpc_slice details;
	grpc_op ops[4];
	grpc_call_error rc;
	size_t n = 0;
	int status;

	if (err == 0 && resp == NULL) {
		err = MP_EIO;
		message = "handler answered without a response";
	}
	if (err == 0 && rpc_pack_bb(resp, &bb) < 0) {
		err = MP_EIO;
		message = "cannot pack the response";
	}
	status = err == 0 ? GRPC_STATUS_OK : mp_err_to_grpc(err);
	details = rpc_status_details(err, message);

	memset(ops, 0, sizeof(ops));
	ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
	if (bb != NULL) {
		ops[n].op = GRPC_OP_SEND_MESSAGE;
		ops[n++].data.send_message.send_message = bb;
	}
	ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	ops[n].data.send_status_from_server.status = (grpc_status_code)status;
	ops[n++].data.send_status_from_server.status_details = &details;
	ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	ops[n++].data.recv_close_on_server.cancelled = &call->close_cancelled;

	pthread_mutex_lock(&call->mu);
	if (call->replied || call->streaming) {
		/* A second answer would be a second SEND_STATUS: refuse it
		 * rather than corrupt the call. */
		pthread_mutex_unlock(&call->mu);
		mp_log_error("rpc_reply_twice", "method=%s",
			     call_name(call));
		if (bb != NULL)
			grpc_byte_buffer_destroy(bb);
		grpc_slice_unref(details);
		return;
	}
	call->replied = true;
	call->reply_bb = bb;
	call->reply_busy = true;
	call->refs++;
	rc = grpc_call_start_batch(call->gcall, ops, n, &call->reply_tag, NULL);
	if (rc != GRPC_CALL_OK) {
		mp_log_error("rpc_reply_failed", "method=%s error=%s",
			     call_name(call),
			     grpc_call_error_to_string(rc));
		call->reply_busy = false;
		call->reply_bb = NULL;
		call->refs--;
		if (bb != NULL)
			grpc_byte_buffer_destroy(bb);
	}
	/* The status details were copied by start_batch. */
	grpc_slice_unref(details);
	/* The handler's reference: the call is gone for it now. */
	call_unref_unlock(call);
}

static void call_on_close_done(struct mp_rpc_call *call);

/* Starts whatever a stream can send next, one SEND_MESSAGE at a time, then
 * the status once the queue is empty. call->mu held. */
static void stream_kick_locked(struct mp_rpc_call *call)
{
	grpc_op op;
	grpc_call_error rc;

	if (call->send_busy || call->closed || call->broken)
		return;
	memset(&op, 0, sizeof(op));
	if (call->q_head != NULL) {
		struct stream_msg *m = call->q_head;

		call->q_head = m->next;
		if (call->q_head == NULL)
			call->q_tail = NULL;
		call->queued--;
		call->send_bb = m->bb;
		free(m);
		op.op = GRPC_OP_SEND_MESSAGE;
		op.data.send_message.send_message = call->send_bb;
		call->send_busy = true;
		call->refs++;
		rc = grpc_call_start_batch(call->gcall, &op, 1,
					   &call->send_tag, NULL);
		if (rc != GRPC_CALL_OK) {
			mp_log_error("rpc_stream_send_failed",
				     "method=%s error=%s",
				     call_name(call),
				     grpc_call_error_to_string(rc));
			grpc_byte_buffer_destroy(call->send_bb);
			call->send_bb = NULL;
			call->send_busy = false;
			call->refs--;
			call->broken = true;
			/* Without a status the client would wait forever. */
			grpc_call_cancel(call->gcall, NULL);
		}
		return;
	}
	if (call->finishing && !call->status_started) {
		grpc_slice details = rpc_status_details(call->fin_err,
							call->fin_msg);

		op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
		op.data.send_status_from_server.status = call->fin_status;
		op.data.send_status_from_server.status_details = &details;
		call->status_started = true;
		call->reply_busy = true;
		call->refs++;
		rc = grpc_call_start_batch(call->gcall, &op, 1,
					   &call->reply_tag, NULL);
		if (rc != GRPC_CALL_OK) {
			mp_log_error("rpc_stream_status_failed",
				     "method=%s error=%s",
				     call_name(call),
				     grpc_call_error_to_string(rc));
			call->reply_busy = false;
			call->refs--;
			grpc_call_cancel(call->gcall, NULL);
		}
		grpc_slice_unref(details);
	}
}

static void stream_drop_queue_locked(struct mp_rpc_call *call)
{
	struct stream_msg *m, *next;

	for (m = call->q_head; m != NULL; m = next) {
		next = m->next;
		grpc_byte_buffer_destroy(m->bb);
		free(m);
	}
	call->q_head = call->q_tail = NULL;
	call->queued = 0;
}

void mp_rpc_stream_start(struct mp_rpc_call *call, size_t max_queue,
			 mp_rpc_close_cb on_close, void *arg)
{
	grpc_op op;
	grpc_call_error rc;

	pthread_mutex_lock(&call->mu);
	if (call->replied || call->streaming) {
		pthread_mutex_unlock(&call->mu);
		mp_log_error("rpc_stream_start_twice", "method=%s",
			     call_name(call));
		return;
	}
	if (call->method == NULL || !call->method->server_streaming)
		mp_log_warn("rpc_stream_on_unary", "method=%s",
			    call_name(call));
	call->streaming = true;
	call->max_queue = max_queue;
	call->on_close = on_close;
	call->on_close_arg = arg;

	/* The only way a server learns that the client went away; started
	 * first so that from here on on_close is guaranteed to run. */
	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	op.data.recv_close_on_server.cancelled = &call->close_cancelled;
	call->close_busy = true;
	call->refs++;
	rc = grpc_call_start_batch(call->gcall, &op, 1, &call->close_tag, NULL);
	if (rc != GRPC_CALL_OK) {
		mp_log_error("rpc_stream_start_failed", "method=%s error=%s",
			     call_name(call),
			     grpc_call_error_to_string(rc));
		/* No completion will come: close here, as that completion
		 * would (it drops the reference taken above), so on_close
		 * still runs exactly once. */
		call->broken = true;
		grpc_call_cancel(call->gcall, NULL);
		pthread_mutex_unlock(&call->mu);
		call_on_close_done(call);
		return;
	}

	/* Headers now, so the client knows the stream was accepted even if
	 * the first message is a long way off. */
	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_SEND_INITIAL_METADATA;
	call->send_busy = true;
	call->refs++;
	rc = grpc_call_start_batch(call->gcall, &op, 1, &call->send_tag, NULL);
	if (rc != GRPC_CALL_OK) {
		mp_log_error("rpc_stream_start_failed", "method=%s error=%s",
			     call_name(call),
			     grpc_call_error_to_string(rc));
		call->send_busy = false;
		call->refs--;
		call->broken = true;
		/* Completes RECV_CLOSE_ON_SERVER, hence on_close. */
		grpc_call_cancel(call->gcall, NULL);
	}
	pthread_mutex_unlock(&call->mu);
}

int mp_rpc_stream_send(struct mp_rpc_call *call, const ProtobufCMessage *msg)
{
	grpc_byte_buffer *bb;
	struct stream_msg *m;
	int ret;

	pthread_mutex_lock(&call->mu);
	ret = !call->streaming ? MP_ESTATE
		: call->closed || call->broken ? MP_ECANCELED
		: call->finishing ? MP_ESTATE
		: call->queued >= call->max_queue && call->send_busy ? MP_ENOSPC
		: 0;
	pthread_mutex_unlock(&call->mu);
	if (ret < 0)
		return ret;

	/* Packed outside the lock: a big message does not stall the server
	 * thread completing this call's previous send. */
	ret = rpc_pack_bb(msg, &bb);
	if (ret < 0)
		return ret;
	m = calloc(1, sizeof(*m));
	if (m == NULL) {
		grpc_byte_buffer_destroy(bb);
		return MP_ENOMEM;
	}
	m->bb = bb;

	pthread_mutex_lock(&call->mu);
	/* Checked again: the stream may have closed while we packed. */
	ret = call->closed || call->broken ? MP_ECANCELED
		: call->finishing ? MP_ESTATE
		: call->queued >= call->max_queue && call->send_busy ? MP_ENOSPC
		: 0;
	if (ret == 0) {
		if (call->q_tail != NULL)
			call->q_tail->next = m;
		else
			call->q_head = m;
		call->q_tail = m;
		call->queued++;
		stream_kick_locked(call);
	}
	pthread_mutex_unlock(&call->mu);
	if (ret < 0) {
		grpc_byte_buffer_destroy(bb);
		free(m);
	}
	return ret;
}

void mp_rpc_stream_finish(struct mp_rpc_call *call, int err,
			  const char *message)
{
	pthread_mutex_lock(&call->mu);
	if (!call->streaming || call->finishing || call->closed) {
		pthread_mutex_unlock(&call->mu);
		return;
	}
	call->finishing = true;
	call->fin_err = err;
	call->fin_status = err == 0 ? GRPC_STATUS_OK
				    : (grpc_status_code)mp_err_to_grpc(err);
	if (message != NULL) {
		call->fin_msg = strdup(message);
		/* Without the text the status still goes out. */
	}
	stream_kick_locked(call);
	pthread_mutex_unlock(&call->mu);
}

void mp_rpc_stream_release(struct mp_rpc_call *call)
{
	if (call == NULL)
		return;
	pthread_mutex_lock(&call->mu);
	if (!call->streaming && !call->replied) {
		/* Dropped without an answer: answer for the owner, or the
		 * call would hold the server's stop forever. */
		pthread_mutex_unlock(&call->mu);
		mp_log_error("rpc_call_dropped", "method=%s",
			     call_name(call));
		mp_rpc_reply(call, NULL, MP_EIO, "call dropped by the server");
		return;
	}
	call_unref_unlock(call);
}

static void call_on_reply_done(struct mp_rpc_call *call)
{
	pthread_mutex_lock(&call->mu);
	call->reply_busy = false;
	if (call->reply_bb != NULL) {
		grpc_byte_buffer_destroy(call->reply_bb);
		call->reply_bb = NULL;
	}
	call_unref_unlock(call);
}

static void call_on_send_done(struct mp_rpc_call *call, int ok)
{
	pthread_mutex_lock(&call->mu);
	call->send_busy = false;
	if (call->send_bb != NULL) {
		grpc_byte_buffer_destroy(call->send_bb);
		call->send_bb = NULL;
	}
	if (!ok) {
		/* The call is dying; RECV_CLOSE_ON_SERVER will say so. */
		call->broken = true;
		stream_drop_queue_locked(call);
	} else {
		stream_kick_locked(call);
	}
	call_unref_unlock(call);
}

static void call_on_close_done(struct mp_rpc_call *call)
{
	mp_rpc_close_cb cb;
	void *arg;

	pthread_mutex_lock(&call->mu);
	call->close_busy = false;
	call->closed = true;
	stream_drop_queue_locked(call);
	cb = call->on_close;
	arg = call->on_close_arg;
	call->on_close = NULL;
	pthread_mutex_unlock(&call->mu);

	/* Unlocked: the owner may send (and get MP_ECANCELED) or release
	 * from inside; this batch's reference keeps the call alive. */
	if (cb != NULL)
		cb(call, arg);

	pthread_mutex_lock(&call->mu);
	call_unref_unlock(call);
}

static int srv_slot_post(struct srv_slot *slot)
{
	struct mp_rpc_server *srv = slot->thr->srv;
	grpc_call_error rc;

	grpc_metadata_array_init(&slot->md);
	slot->call = NULL;
	slot->payload = NULL;
	if (slot->method != NULL) {
		rc = grpc_server_request_registered_call(
			srv->server, slot->method->registered, &slot->call,
			&slot->deadline, &slot->md, &slot->payload,
			slot->thr->cq, slot->thr->cq, &slot->tag);
	} else {
		grpc_call_details_init(&slot->details);
		rc = grpc_server_request_call(srv->server, &slot->call,
					      &slot->details, &slot->md,
					      slot->thr->cq, slot->thr->cq,
					      &slot->tag);
		if (rc != GRPC_CALL_OK)
			grpc_call_details_destroy(&slot->details);
	}
	if (rc != GRPC_CALL_OK) {
		grpc_metadata_array_destroy(&slot->md);
		if (!atomic_load(&srv->stopping))
			mp_log_error("rpc_slot_post_failed", "method=%s error=%s",
				     slot->method != NULL ? slot->method->path
							  : "*",
				     grpc_call_error_to_string(rc));
		return MP_EIO;
	}
	return 0;
}

/* A new call from a slot: unpack, then hand it to the method's handler on
 * this thread. The call was counted in srv->outstanding by the caller. */
static void srv_call_begin(struct srv_thread *thr, struct srv_method *method,
			   grpc_call *gcall, grpc_byte_buffer *payload)
{
	struct mp_rpc_server *srv = thr->srv;
	struct mp_rpc_call *call;
	ProtobufCMessage *req = NULL;
	char *peer;

	call = calloc(1, sizeof(*call));
	if (call == NULL) {
		grpc_call_cancel_with_status(gcall, GRPC_STATUS_RESOURCE_EXHAUSTED,
					     "out of memory", NULL);
		if (payload != NULL)
			grpc_byte_buffer_destroy(payload);
		call_grpc_release(gcall, srv);
		return;
	}
	pthread_mutex_init(&call->mu, NULL);
	call->reply_tag.kind = TAG_CALL_REPLY;
	call->send_tag.kind = TAG_CALL_SEND;
	call->close_tag.kind = TAG_CALL_CLOSE;
	call->srv = srv;
	call->method = method;
	call->gcall = gcall;
	call->refs = 1;
	peer = grpc_call_get_peer(gcall);
	if (peer != NULL) {
		call->peer = strdup(peer);
		gpr_free(peer);
	}

	if (atomic_load(&srv->stopping)) {
		if (payload != NULL)
			grpc_byte_buffer_destroy(payload);
		mp_rpc_reply(call, NULL, MP_EUNAVAIL, "server stopping");
		return;
	}
	if (method == NULL) {
		mp_rpc_reply(call, NULL, MP_EUNIMPL, "unknown method");
		return;
	}
	/* No payload: the client went away or sent no message. */
	if (payload == NULL ||
	    rpc_unpack_bb(payload, method->desc->input, &req) < 0) {
		if (payload != NULL)
			grpc_byte_buffer_destroy(payload);
		mp_rpc_reply(call, NULL, MP_EINVAL, "malformed request");
		return;
	}
	grpc_byte_buffer_destroy(payload);
	call->req = req;
	method->handler(call, req, method->ctx);
}

static void srv_on_slot(struct srv_thread *thr, struct srv_slot *slot, int ok)
{
	struct mp_rpc_server *srv = thr->srv;
	struct srv_method *method = slot->method;
	grpc_call *gcall = slot->call;
	grpc_byte_buffer *payload = slot->payload;
	bool repost;

	grpc_metadata_array_destroy(&slot->md);
	if (method == NULL) {
		if (ok) {
			char q[256];

			mp_log_debug("rpc_unknown_method", "path=%s",
				     mp_log_quote(q, sizeof(q),
					(const char *)GRPC_SLICE_START_PTR(
						slot->details.method),
					GRPC_SLICE_LENGTH(
						slot->details.method)));
		}
		grpc_call_details_destroy(&slot->details);
	}
	if (!ok) {
		/* The server is shutting down: the slot dies. */
		if (payload != NULL)
			grpc_byte_buffer_destroy(payload);
		if (gcall != NULL)
			grpc_call_unref(gcall);
		free(slot);
		srv_outstanding_add(srv, -1);
		return;
	}

	/* Counted before the slot stops counting, so outstanding never reads
	 * 0 while this call is still ours. */
	srv_outstanding_add(srv, 1);
	/* Re-posted before the handler runs: the next client is not kept
	 * waiting by this one. */
	repost = !atomic_load(&srv->stopping) && srv_slot_post(slot) == 0;
	if (!repost) {
		free(slot);
		srv_outstanding_add(srv, -1);
	}
	srv_call_begin(thr, method, gcall, payload);
}

static int srv_slot_new(struct srv_thread *thr, struct srv_method *method)
{
	struct srv_slot *slot = calloc(1, sizeof(*slot));

	if (slot == NULL)
		return MP_ENOMEM;
	slot->tag.kind = TAG_SLOT;
	slot->thr = thr;
	slot->method = method;
	srv_outstanding_add(thr->srv, 1);
	if (srv_slot_post(slot) < 0) {
		srv_outstanding_add(thr->srv, -1);
		free(slot);
		return MP_EIO;
	}
	return 0;
}

static void srv_dispatch(struct srv_thread *thr, struct rpc_tag *tag, int ok)
{
	switch (tag->kind) {
	case TAG_SLOT:
		srv_on_slot(thr, CONTAINER_OF(tag, struct srv_slot, tag), ok);
		break;
	case TAG_CALL_REPLY:
		call_on_reply_done(CONTAINER_OF(tag, struct mp_rpc_call,
						reply_tag));
		break;
	case TAG_CALL_SEND:
		call_on_send_done(CONTAINER_OF(tag, struct mp_rpc_call,
					       send_tag), ok);
		break;
	case TAG_CALL_CLOSE:
		call_on_close_done(CONTAINER_OF(tag, struct mp_rpc_call,
						close_tag));
		break;
	default:
		mp_log_error("rpc_unknown_tag", "kind=%d", (int)tag->kind);
		break;
	}
}

static void *srv_thread_main(void *arg)
{
	struct srv_thread *thr = arg;

	for (;;) {
		grpc_event ev = grpc_completion_queue_next(
			thr->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);

		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type == GRPC_OP_COMPLETE)
			srv_dispatch(thr, ev.tag, ev.success);
	}
	return NULL;
}

static void rpc_drain_cq(grpc_completion_queue *cq)
{
	for (;;) {
		grpc_event ev = grpc_completion_queue_next(
			cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);

		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
	}
}

/* Frees what was built; the grpc_server must be destroyed already (or never
 * created). Queues must be shut down and drained (or never used). */
static void srv_free(struct mp_rpc_server *srv)
{
	if (srv->threads != NULL) {
		for (int i = 0; i < srv->n_threads; i++)
			if (srv->threads[i].cq != NULL)
				grpc_completion_queue_destroy(srv->threads[i].cq);
		free(srv->threads);
	}
	if (srv->shutdown_cq != NULL)
		grpc_completion_queue_destroy(srv->shutdown_cq);
	if (srv->methods != NULL) {
		for (size_t i = 0; i < srv->n_methods; i++)
			free(srv->methods[i].path);
		free(srv->methods);
	}
	pthread_cond_destroy(&srv->cond);
	pthread_mutex_destroy(&srv->mu);
	free(srv);
}

/* Queues never handed to a thread: shut down and drained here. */
static void srv_destroy_unstarted(struct mp_rpc_server *srv)
{
	if (srv->server != NULL)
		grpc_server_destroy(srv->server);
	srv->server = NULL;
	for (int i = 0; i < srv->n_threads; i++) {
		if (srv->threads[i].cq == NULL)
			continue;
		grpc_completion_queue_shutdown(srv->threads[i].cq);
		rpc_drain_cq(srv->threads[i].cq);
	}
	if (srv->shutdown_cq != NULL) {
		grpc_completion_queue_shutdown(srv->shutdown_cq);
		rpc_drain_cq(srv->shutdown_cq);
	}
	srv_free(srv);
}

/* The shutdown order gRPC needs: stop accepting, cancel every call, wait
 * for the server's tag, wait for our slots and calls, then the queues, then
 * the server. */
static void srv_shutdown(struct mp_rpc_server *srv)
{
	struct timespec until;

	atomic_store(&srv->stopping, true);
	grpc_server_shutdown_and_notify(srv->server, srv->shutdown_cq,
					&srv->shutdown_tag);
	/* Cancelled streams complete their RECV_CLOSE_ON_SERVER, so their
	 * on_close runs on the server threads while we wait below. */
	grpc_server_cancel_all_calls(srv->server);
	for (;;) {
		grpc_event ev = grpc_completion_queue_next(
			srv->shutdown_cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
			NULL);

		if (ev.type == GRPC_OP_COMPLETE && ev.tag == &srv->shutdown_tag)
			break;
		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
	}

	/* Unary calls are still ours until their handler answers (the store
	 * does, from its own thread); slots until gRPC fails them. */
	pthread_mutex_lock(&srv->mu);
	while (srv->outstanding > 0) {
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += RPC_STOP_LOG_INTERVAL_S;
		if (pthread_cond_timedwait(&srv->cond, &srv->mu, &until) ==
		    ETIMEDOUT)
			mp_log_warn("rpc_stop_waiting", "port=%d outstanding=%zu",
				    srv->port, srv->outstanding);
	}
	pthread_mutex_unlock(&srv->mu);

	for (int i = 0; i < srv->n_threads; i++)
		grpc_completion_queue_shutdown(srv->threads[i].cq);
	for (int i = 0; i < srv->n_threads; i++) {
		if (srv->threads[i].running)
			pthread_join(srv->threads[i].tid, NULL);
		else
			rpc_drain_cq(srv->threads[i].cq);
		srv->threads[i].running = false;
	}
	grpc_completion_queue_shutdown(srv->shutdown_cq);
	rpc_drain_cq(srv->shutdown_cq);
	grpc_server_destroy(srv->server);
	srv->server = NULL;
}

static int srv_check_methods(const ProtobufCServiceDescriptor *svc,
			     const struct mp_rpc_method *methods, size_t n,
			     char **error_r)
{
	for (unsigned i = 0; i < svc->n_methods; i++) {
		size_t j;

		for (j = 0; j < n; j++)
			if (methods[j].name != NULL &&
			    strcmp(methods[j].name, svc->methods[i].name) == 0)
				break;
		if (j == n) {
			rpc_set_error(error_r, "method %s.%s has no handler",
				      svc->name, svc->methods[i].name);
			return MP_EINVAL;
		}
		if (methods[j].handler == NULL) {
			rpc_set_error(error_r, "method %s.%s: NULL handler",
				      svc->name, svc->methods[i].name);
			return MP_EINVAL;
		}
	}
	for (size_t j = 0; j < n; j++) {
		unsigned i;

		for (i = 0; i < svc->n_methods; i++)
			if (methods[j].name != NULL &&
			    strcmp(methods[j].name, svc->methods[i].name) == 0)
				break;
		if (i == svc->n_methods) {
			rpc_set_error(error_r, "%s has no method %s", svc->name,
				      methods[j].name != NULL ? methods[j].name
							      : "(null)");
			return MP_EINVAL;
		}
		for (size_t k = 0; k < j; k++)
			if (strcmp(methods[k].name, methods[j].name) == 0) {
				rpc_set_error(error_r,
					      "method %s listed twice",
					      methods[j].name);
				return MP_EINVAL;
			}
	}
	return 0;
}

int mp_rpc_server_start(const ProtobufCServiceDescriptor *svc,
			const struct mp_rpc_method *methods, size_t n,
			void *ctx, const struct mp_rpc_server_opts *opts,
			struct mp_rpc_server **srv_r, char **error_r)
{
	struct mp_rpc_service one = { svc, methods, n, ctx };
	if (svc == NULL) {
		if (error_r != NULL)
			*error_r = NULL;
		*srv_r = NULL;
		rpc_set_error(error_r, "missing service, methods or address");
		return MP_EINVAL;
	}
	return mp_rpc_server_start_multi(&one, 1, opts, srv_r, error_r);
}

int mp_rpc_server_start_multi(const struct mp_rpc_service *svcs, size_t nsvcs,
			      const struct mp_rpc_server_opts *opts,
			      struct mp_rpc_server **srv_r, char **error_r)
{
	struct mp_rpc_server *srv;
	grpc_server_credentials *creds;
	grpc_arg args[3];
	grpc_channel_args chargs;
	size_t max_msg;
	int ret;

	if (error_r != NULL)
		*error_r = NULL;
	*srv_r = NULL;
	if (svcs == NULL || nsvcs == 0 || opts == NULL || opts->listen == NULL) {
		rpc_set_error(error_r, "missing service, methods or address");
		return MP_EINVAL;
	}
	for (size_t v = 0; v < nsvcs; v++) {
		if (svcs[v].svc == NULL || (svcs[v].methods == NULL && svcs[v].n > 0)) {
			rpc_set_error(error_r, "missing service, methods or address");
			return MP_EINVAL;
		}
		ret = srv_check_methods(svcs[v].svc, svcs[v].methods, svcs[v].n, error_r);
		if (ret < 0)
			return ret;
	}

	srv = calloc(1, sizeof(*srv));
	if (srv == NULL)
		return MP_ENOMEM;
	pthread_mutex_init(&srv->mu, NULL);
	pthread_cond_init(&srv->cond, NULL);
	atomic_init(&srv->stopping, false);
	srv->shutdown_tag.kind = TAG_SHUTDOWN;
	srv->ctx = svcs[0].ctx;
	srv->n_threads = opts->threads > 0 ? opts->threads : RPC_DEFAULT_THREADS;
	srv->slots = opts->slots > 0 ? opts->slots : RPC_DEFAULT_SLOTS;
	max_msg = opts->max_msg > 0 ? opts->max_msg : MP_RPC_DEFAULT_MAX_MSG;

	srv->n_methods = 0;
	for (size_t v = 0; v < nsvcs; v++)
		srv->n_methods += svcs[v].svc->n_methods;
	srv->methods = calloc(srv->n_methods > 0 ? srv->n_methods : 1,
			      sizeof(*srv->methods));
	srv->threads = calloc((size_t)srv->n_threads, sizeof(*srv->threads));
	if (srv->methods == NULL || srv->threads == NULL) {
		srv_free(srv);
		return MP_ENOMEM;
	}
	size_t mk = 0;
	for (size_t v = 0; v < nsvcs; v++) {
		const ProtobufCServiceDescriptor *svc = svcs[v].svc;
		for (unsigned mi = 0; mi < svc->n_methods; mi++, mk++) {
			struct srv_method *m = &srv->methods[mk];

			m->desc = &svc->methods[mi];
			m->ctx = svcs[v].ctx;
			for (size_t j = 0; j < svcs[v].n; j++)
				if (strcmp(svcs[v].methods[j].name, m->desc->name) == 0) {
					m->handler = svcs[v].methods[j].handler;
					m->server_streaming = svcs[v].methods[j].server_streaming;
				}
			if (asprintf(&m->path, "/%s/%s", svc->name, m->desc->name) < 0) {
				m->path = NULL;
				srv_free(srv);
				return MP_ENOMEM;
			}
		}
	}

	/* A stale server must not silently share our port (SO_REUSEPORT is
	 * gRPC's default). */
	memset(args, 0, sizeof(args));
	args[0].type = GRPC_ARG_INTEGER;
	args[0].key = GRPC_ARG_ALLOW_REUSEPORT;
	args[0].value.integer = 0;
	args[1].type = GRPC_ARG_INTEGER;
	args[1].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
	args[1].value.integer = rpc_int_arg(max_msg);
	args[2].type = GRPC_ARG_INTEGER;
	args[2].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
	args[2].value.integer = rpc_int_arg(max_msg);
	chargs.num_args = 3;
	chargs.args = args;
	srv->server = grpc_server_create(&chargs, NULL);
	if (srv->server == NULL) {
		srv_free(srv);
		return MP_ENOMEM;
	}
	for (int i = 0; i < srv->n_threads; i++) {
		srv->threads[i].srv = srv;
		srv->threads[i].cq = grpc_completion_queue_create_for_next(NULL);
		grpc_server_register_completion_queue(srv->server,
						      srv->threads[i].cq, NULL);
	}
	srv->shutdown_cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(srv->server, srv->shutdown_cq,
					      NULL);
	for (size_t i = 0; i < srv->n_methods; i++) {
		struct srv_method *m = &srv->methods[i];

		/* Unary and server-streaming both take exactly one request:
		 * gRPC reads it before the call is delivered. */
		m->registered = grpc_server_register_method(
			srv->server, m->path, NULL,
			GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
		if (m->registered == NULL) {
			rpc_set_error(error_r, "cannot register %s", m->path);
			srv_destroy_unstarted(srv);
			return MP_EINVAL;
		}
	}

	creds = grpc_insecure_server_credentials_create();
	srv->port = grpc_server_add_http2_port(srv->server, opts->listen, creds);
	grpc_server_credentials_release(creds);
	if (srv->port == 0) {
		rpc_set_error(error_r, "cannot listen on %s", opts->listen);
		srv_destroy_unstarted(srv);
		return MP_EIO;
	}
	grpc_server_start(srv->server);

	/* Threads first, slots after: a slot must never sit on a queue that
	 * no thread drains. */
	for (int i = 0; i < srv->n_threads; i++) {
		int rc = pthread_create(&srv->threads[i].tid, NULL,
					srv_thread_main, &srv->threads[i]);
		if (rc != 0) {
			rpc_set_error(error_r, "cannot start thread: %s",
				      strerror(rc));
			srv_shutdown(srv);
			srv_free(srv);
			return MP_ENOMEM;
		}
		srv->threads[i].running = true;
	}
	for (int i = 0; i < srv->n_threads; i++) {
		/* k == n_methods: the unregistered-path slots. */
		for (size_t k = 0; k <= srv->n_methods; k++) {
			int count = k < srv->n_methods ? srv->slots
						       : RPC_UNKNOWN_SLOTS;

			for (int c = 0; c < count; c++) {
				ret = srv_slot_new(&srv->threads[i],
						   k < srv->n_methods
						   ? &srv->methods[k] : NULL);
				if (ret < 0)
					goto fail_slots;
			}
		}
	}
	mp_log_info("rpc_server_started", "service=%s services=%zu port=%d threads=%d",
		    svcs[0].svc->name, nsvcs, srv->port, srv->n_threads);
	*srv_r = srv;
	return 0;

fail_slots:
	rpc_set_error(error_r, "cannot post request slots");
	srv_shutdown(srv);
	srv_free(srv);
	return ret;
}

int mp_rpc_server_port(const struct mp_rpc_server *srv)
{
	return srv->port;
}

void mp_rpc_server_stop(struct mp_rpc_server **srvp)
{
	struct mp_rpc_server *srv = *srvp;

	if (srv == NULL)
		return;
	*srvp = NULL;
	srv_shutdown(srv);
	mp_log_info("rpc_server_stopped", "port=%d", srv->port);
	srv_free(srv);
}

/* ------------------------------------------------------------- client */

struct mp_rpc_channel {
	grpc_channel *channel; /* owned */
	char *target;          /* owned */
};

int mp_rpc_channel_open(const char *target, size_t max_msg,
			struct mp_rpc_channel **ch_r)
{
	struct mp_rpc_channel *ch;
	grpc_channel_credentials *creds;
	grpc_arg args[6];
	grpc_channel_args chargs;

	*ch_r = NULL;
	if (target == NULL)
		return MP_EINVAL;
	if (max_msg == 0)
		max_msg = MP_RPC_DEFAULT_MAX_MSG;
	ch = calloc(1, sizeof(*ch));
	if (ch == NULL)
		return MP_ENOMEM;
	ch->target = strdup(target);
	if (ch->target == NULL) {
		free(ch);
		return MP_ENOMEM;
	}
	memset(args, 0, sizeof(args));
	args[0].type = GRPC_ARG_INTEGER;
	args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
	args[0].value.integer = rpc_int_arg(max_msg);
	args[1].type = GRPC_ARG_INTEGER;
	args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
	args[1].value.integer = rpc_int_arg(max_msg);
	args[2].type = GRPC_ARG_INTEGER;
	args[2].key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
	args[2].value.integer = RPC_RECONNECT_INITIAL_MS;
	args[3].type = GRPC_ARG_INTEGER;
	args[3].key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
	args[3].value.integer = RPC_RECONNECT_MAX_MS;
	/* A restarted node must be reached again within a fraction of a
	 * second: gRPC's defaults (20 s minimum connect backoff, 30 s between
	 * re-resolutions) stall a channel for seconds after a refusal. */
	args[4].type = GRPC_ARG_INTEGER;
	args[4].key = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS;
	/* gRPC also takes this as the shortest connect timeout: keep it long
	 * enough for a loaded machine. */
	args[4].value.integer = RPC_CONNECT_TIMEOUT_MS;
	args[5].type = GRPC_ARG_INTEGER;
	args[5].key = GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS;
	args[5].value.integer = RPC_RECONNECT_INITIAL_MS;
	chargs.num_args = 6;
	chargs.args = args;
	creds = grpc_insecure_credentials_create();
	ch->channel = grpc_channel_create(target, creds, &chargs);
	grpc_channel_credentials_release(creds);
	if (ch->channel == NULL) {
		free(ch->target);
		free(ch);
		return MP_ENOMEM;
	}
	*ch_r = ch;
	return 0;
}

void mp_rpc_channel_close(struct mp_rpc_channel **chp)
{
	struct mp_rpc_channel *ch = *chp;

	if (ch == NULL)
		return;
	*chp = NULL;
	/* Calls still in flight keep gRPC's channel alive on their own. */
	grpc_channel_destroy(ch->channel);
	free(ch->target);
	free(ch);
}

const char *mp_rpc_channel_target(const struct mp_rpc_channel *ch)
{
	return ch->target;
}

/* Fail fast: a dead node answers UNAVAILABLE now, not at the deadline. */
#define RPC_CLIENT_MD_FLAGS GRPC_INITIAL_METADATA_WAIT_FOR_READY_EXPLICITLY_SET

/* One client unary call: its ops' buffers live here until the batch is
 * done. */
struct client_unary {
	grpc_call *gcall;             /* owned */
	grpc_byte_buffer *send_bb;    /* owned */
	grpc_byte_buffer *recv_bb;    /* owned once the batch completes */
	grpc_metadata_array init_md, trail_md;
	grpc_status_code status;
	grpc_slice details;           /* owned */
	const ProtobufCMessageDescriptor *resp_desc; /* borrowed */
};

static int cu_start(struct client_unary *u, struct mp_rpc_channel *ch,
		    grpc_completion_queue *cq, const char *path,
		    const ProtobufCMessage *req,
		    const ProtobufCMessageDescriptor *resp_desc,
		    int64_t timeout_ms, void *tag)
{
	grpc_op ops[6];
	grpc_call_error rc;
	int ret;

	memset(u, 0, sizeof(*u));
	if (ch == NULL || path == NULL || req == NULL || resp_desc == NULL)
		return MP_EINVAL;
	u->resp_desc = resp_desc;
	u->status = GRPC_STATUS_UNKNOWN;
	u->details = grpc_empty_slice();
	ret = rpc_pack_bb(req, &u->send_bb);
	if (ret < 0)
		return ret;
	if (timeout_ms <= 0)
		timeout_ms = RPC_DEFAULT_CALL_TIMEOUT_MS;
	u->gcall = grpc_channel_create_call(ch->channel, NULL,
					    GRPC_PROPAGATE_DEFAULTS, cq,
					    grpc_slice_from_static_string(path),
					    NULL, rpc_deadline_ms(timeout_ms),
					    NULL);
	if (u->gcall == NULL) {
		grpc_byte_buffer_destroy(u->send_bb);
		return MP_ENOMEM;
	}
	grpc_metadata_array_init(&u->init_md);
	grpc_metadata_array_init(&u->trail_md);

	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[0].flags = RPC_CLIENT_MD_FLAGS;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = u->send_bb;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &u->init_md;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = &u->recv_bb;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = &u->trail_md;
	ops[5].data.recv_status_on_client.status = &u->status;
	ops[5].data.recv_status_on_client.status_details = &u->details;
	rc = grpc_call_start_batch(u->gcall, ops, 6, tag, NULL);
	if (rc != GRPC_CALL_OK) {
		mp_log_error("rpc_call_start_failed", "path=%s error=%s", path,
			     grpc_call_error_to_string(rc));
		grpc_call_unref(u->gcall);
		grpc_byte_buffer_destroy(u->send_bb);
		grpc_metadata_array_destroy(&u->init_md);
		grpc_metadata_array_destroy(&u->trail_md);
		return MP_EIO;
	}
	return 0;
}

/* After the batch completed: the result, then everything freed. */
static int cu_finish(struct client_unary *u, int ok, ProtobufCMessage **resp_r,
		     char **error_r)
{
	int ret;

	*resp_r = NULL;
	*error_r = NULL;
	if (u->status != GRPC_STATUS_OK) {
		ret = rpc_status_err(u->status, u->details, error_r);
	} else if (!ok) {
		ret = MP_EIO;
		*error_r = strdup("call failed");
	} else if (u->recv_bb == NULL) {
		ret = MP_EPROTO;
		*error_r = strdup("no response message");
	} else {
		ret = rpc_unpack_bb(u->recv_bb, u->resp_desc, resp_r);
		if (ret < 0)
			*error_r = strdup("malformed response");
	}
	if (u->recv_bb != NULL)
		grpc_byte_buffer_destroy(u->recv_bb);
	grpc_byte_buffer_destroy(u->send_bb);
	grpc_metadata_array_destroy(&u->init_md);
	grpc_metadata_array_destroy(&u->trail_md);
	grpc_slice_unref(u->details);
	grpc_call_unref(u->gcall);
	memset(u, 0, sizeof(*u));
	return ret;
}

int mp_rpc_call(struct mp_rpc_channel *ch, const char *path,
		const ProtobufCMessage *req,
		const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
		ProtobufCMessage **resp_r, char **error_r)
{
	struct client_unary u;
	grpc_completion_queue *cq;
	grpc_event ev;
	char *err_text = NULL;
	int ret;

	*resp_r = NULL;
	if (error_r != NULL)
		*error_r = NULL;
	cq = grpc_completion_queue_create_for_next(NULL);
	ret = cu_start(&u, ch, cq, path, req, resp_desc, timeout_ms, &u);
	if (ret == 0) {
		/* The call's deadline bounds this wait. */
		do {
			ev = grpc_completion_queue_next(
				cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
		} while (ev.type != GRPC_OP_COMPLETE);
		ret = cu_finish(&u, ev.success, resp_r, &err_text);
	}
	grpc_completion_queue_shutdown(cq);
	rpc_drain_cq(cq);
	grpc_completion_queue_destroy(cq);
	if (error_r != NULL)
		*error_r = err_text;
	else
		free(err_text);
	return ret;
}

struct async_call {
	struct rpc_tag tag;             /* TAG_ASYNC_UNARY */
	struct async_call *prev, *next; /* in the cq's in-flight list */
	struct client_unary u;
	mp_rpc_done_cb cb;
	void *arg;
};

struct mp_rpc_cq {
	grpc_completion_queue *cq; /* owned */
	pthread_t thread;
	pthread_mutex_t mu;
	struct async_call *inflight; /* owned list, under mu */
	struct mp_rpc_astream *streams; /* live streams (not yet ended), under
					 * mu; each holds a reference on itself */
	bool stopping;               /* under mu */
	bool self_free;              /* stopped from a callback: the thread
				      * frees everything on its way out */
};

/* An asynchronous server stream: one batch that sends the request and
 * ends with the status (main), and one RECV_MESSAGE at a time (recv),
 * re-posted after each message. on_end runs once neither is in flight, so
 * it always comes after the last on_msg. */
struct mp_rpc_astream {
	struct rpc_tag main_tag;     /* TAG_ASTREAM_MAIN */
	struct rpc_tag recv_tag;     /* TAG_ASTREAM_RECV */
	struct mp_rpc_astream *prev, *next; /* in cq->streams, under cq->mu */
	const ProtobufCMessageDescriptor *resp_desc; /* borrowed */
	mp_rpc_msg_cb on_msg;
	mp_rpc_end_cb on_end;
	void *arg;
	grpc_byte_buffer *send_bb;   /* owned */
	grpc_byte_buffer *recv_bb;   /* owned once RECV_MESSAGE completes */
	grpc_metadata_array init_md, trail_md;
	grpc_status_code status;
	grpc_slice details;          /* owned */
	/* Under cq->mu: open sets them while the completion thread may
	 * already see the main batch complete. */
	bool main_busy, recv_busy;
	/* Completion thread only (and open, under cq->mu). */
	int local_err;               /* ours, over the status: MP_EPROTO... */
	const char *local_msg;       /* static */

	pthread_mutex_t mu;
	grpc_call *gcall;            /* owned until on_end; under mu */
	int refs;                    /* caller's handle + the queue's; mu */
	bool cancelled;              /* under mu */
	bool ended;                  /* on_end is running or has run; mu */
};

static void cq_free(struct mp_rpc_cq *cq)
{
	grpc_completion_queue_destroy(cq->cq);
	pthread_mutex_destroy(&cq->mu);
	free(cq);
}

static void astream_on_event(struct mp_rpc_cq *cq, struct rpc_tag *tag,
			     int ok);

static void *cq_thread_main(void *arg)
{
	struct mp_rpc_cq *cq = arg;

	for (;;) {
		grpc_event ev = grpc_completion_queue_next(
			cq->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
		struct async_call *ac;
		ProtobufCMessage *resp;
		char *err_text;
		int ret;

		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type != GRPC_OP_COMPLETE)
			continue;
		struct rpc_tag *tag = ev.tag;
		if (tag->kind == TAG_ASTREAM_MAIN ||
		    tag->kind == TAG_ASTREAM_RECV) {
			astream_on_event(cq, tag, ev.success);
			continue;
		}
		ac = CONTAINER_OF(tag, struct async_call, tag);
		pthread_mutex_lock(&cq->mu);
		if (ac->prev != NULL)
			ac->prev->next = ac->next;
		else
			cq->inflight = ac->next;
		if (ac->next != NULL)
			ac->next->prev = ac->prev;
		pthread_mutex_unlock(&cq->mu);

		ret = cu_finish(&ac->u, ev.success, &resp, &err_text);
		ac->cb(ret, err_text, resp, ac->arg);
		free(err_text);
		free(ac);
	}
	/* Read unlocked: set before the queue was shut down, and the queue
	 * has reported that shutdown to us since. */
	if (cq->self_free)
		cq_free(cq);
	return NULL;
}

int mp_rpc_cq_start(struct mp_rpc_cq **cq_r)
{
	struct mp_rpc_cq *cq;
	int rc;

	*cq_r = NULL;
	cq = calloc(1, sizeof(*cq));
	if (cq == NULL)
		return MP_ENOMEM;
	pthread_mutex_init(&cq->mu, NULL);
	cq->cq = grpc_completion_queue_create_for_next(NULL);
	rc = pthread_create(&cq->thread, NULL, cq_thread_main, cq);
	if (rc != 0) {
		grpc_completion_queue_shutdown(cq->cq);
		rpc_drain_cq(cq->cq);
		grpc_completion_queue_destroy(cq->cq);
		pthread_mutex_destroy(&cq->mu);
		free(cq);
		return MP_ENOMEM;
	}
	*cq_r = cq;
	return 0;
}

void mp_rpc_cq_stop(struct mp_rpc_cq **cqp)
{
	struct mp_rpc_cq *cq = *cqp;

	if (cq == NULL)
		return;
	*cqp = NULL;
	pthread_mutex_lock(&cq->mu);
	cq->stopping = true;
	/* From a callback the thread cannot be joined: it runs the
	 * remaining (cancelled) callbacks after this one returns, then
	 * frees everything itself. */
	cq->self_free = pthread_equal(pthread_self(), cq->thread);
	for (struct async_call *ac = cq->inflight; ac != NULL; ac = ac->next)
		grpc_call_cancel(ac->u.gcall, NULL);
	/* A stream starts no batch once stopping is set (it checks under
	 * mu), so the batches cancelled here are its last ones. */
	for (struct mp_rpc_astream *st = cq->streams; st != NULL; st = st->next)
		grpc_call_cancel(st->gcall, NULL);
	/* Under mu so no mp_rpc_call_async can start a batch on the dead
	 * queue; the queue reports shutdown only after every cancelled
	 * batch has completed, i.e. after every callback ran. */
	grpc_completion_queue_shutdown(cq->cq);
	pthread_mutex_unlock(&cq->mu);
	if (cq->self_free) {
		pthread_detach(cq->thread);
		return;
	}
	pthread_join(cq->thread, NULL);
	cq_free(cq);
}

int mp_rpc_call_async(struct mp_rpc_channel *ch, struct mp_rpc_cq *cq,
		      const char *path, const ProtobufCMessage *req,
		      const ProtobufCMessageDescriptor *resp_desc,
		      int64_t timeout_ms, mp_rpc_done_cb cb, void *arg)
{
	struct async_call *ac;
	int ret;

	if (cq == NULL || cb == NULL)
		return MP_EINVAL;
	ac = calloc(1, sizeof(*ac));
	if (ac == NULL)
		return MP_ENOMEM;
	ac->tag.kind = TAG_ASYNC_UNARY;
	ac->cb = cb;
	ac->arg = arg;
	pthread_mutex_lock(&cq->mu);
	if (cq->stopping) {
		pthread_mutex_unlock(&cq->mu);
		free(ac);
		return MP_ECANCELED;
	}
	ret = cu_start(&ac->u, ch, cq->cq, path, req, resp_desc, timeout_ms,
		       &ac->tag);
	if (ret < 0) {
		pthread_mutex_unlock(&cq->mu);
		free(ac);
		return ret;
	}
	/* Linked before unlocking: the completion thread unlinks under mu. */
	ac->next = cq->inflight;
	if (ac->next != NULL)
		ac->next->prev = ac;
	cq->inflight = ac;
	pthread_mutex_unlock(&cq->mu);
	return 0;
}

static void astream_free(struct mp_rpc_astream *st)
{
	if (st->gcall != NULL)
		grpc_call_unref(st->gcall);
	if (st->send_bb != NULL)
		grpc_byte_buffer_destroy(st->send_bb);
	if (st->recv_bb != NULL)
		grpc_byte_buffer_destroy(st->recv_bb);
	grpc_metadata_array_destroy(&st->init_md);
	grpc_metadata_array_destroy(&st->trail_md);
	grpc_slice_unref(st->details);
	pthread_mutex_destroy(&st->mu);
	free(st);
}

static void astream_unref(struct mp_rpc_astream *st)
{
	bool last;

	pthread_mutex_lock(&st->mu);
	last = --st->refs == 0;
	pthread_mutex_unlock(&st->mu);
	if (last)
		astream_free(st);
}

/* Called with cq->mu held, so a stopping queue never gets a new batch. */
static int astream_post_recv_locked(struct mp_rpc_cq *cq,
				    struct mp_rpc_astream *st)
{
	grpc_call_error rc;
	grpc_op op;
	bool cancelled;

	pthread_mutex_lock(&st->mu);
	cancelled = st->cancelled;
	pthread_mutex_unlock(&st->mu);
	if (cq->stopping || cancelled)
		return MP_ECANCELED;
	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_RECV_MESSAGE;
	op.data.recv_message.recv_message = &st->recv_bb;
	st->recv_busy = true;
	rc = grpc_call_start_batch(st->gcall, &op, 1, &st->recv_tag, NULL);
	if (rc != GRPC_CALL_OK) {
		st->recv_busy = false;
		mp_log_error("rpc_stream_recv_failed", "error=%s",
			     grpc_call_error_to_string(rc));
		return MP_EIO;
	}
	return 0;
}

/* Our own reason to end the stream: the main batch then completes with
 * CANCELLED, and on_end reports err rather than that. */
static void astream_fail(struct mp_rpc_astream *st, int err, const char *msg)
{
	if (st->local_err == 0) {
		st->local_err = err;
		st->local_msg = msg;
	}
	pthread_mutex_lock(&st->mu);
	grpc_call_cancel(st->gcall, NULL);
	pthread_mutex_unlock(&st->mu);
}

static void astream_on_recv(struct mp_rpc_cq *cq, struct mp_rpc_astream *st,
			    int ok)
{
	grpc_byte_buffer *bb = st->recv_bb;
	ProtobufCMessage *msg = NULL;
	bool cancelled;
	int ret;

	st->recv_bb = NULL;
	if (!ok || bb == NULL) {
		/* End of the messages: the status (main) says why. */
		if (bb != NULL)
			grpc_byte_buffer_destroy(bb);
		return;
	}
	ret = rpc_unpack_bb(bb, st->resp_desc, &msg);
	grpc_byte_buffer_destroy(bb);
	if (ret < 0) {
		astream_fail(st, MP_EPROTO, "malformed message");
		return;
	}
	pthread_mutex_lock(&st->mu);
	cancelled = st->cancelled;
	pthread_mutex_unlock(&st->mu);
	if (cancelled)
		protobuf_c_message_free_unpacked(msg, NULL);
	else
		st->on_msg(msg, st->arg);
	pthread_mutex_lock(&cq->mu);
	ret = astream_post_recv_locked(cq, st);
	pthread_mutex_unlock(&cq->mu);
	if (ret == MP_EIO)
		astream_fail(st, MP_EIO, "cannot read the stream");
}

static void astream_on_event(struct mp_rpc_cq *cq, struct rpc_tag *tag,
			     int ok)
{
	struct mp_rpc_astream *st;
	grpc_call *gcall;
	char *text = NULL;
	bool over;
	int err;

	if (tag->kind == TAG_ASTREAM_MAIN) {
		st = CONTAINER_OF(tag, struct mp_rpc_astream, main_tag);
		pthread_mutex_lock(&cq->mu);
		st->main_busy = false;
		pthread_mutex_unlock(&cq->mu);
	} else {
		st = CONTAINER_OF(tag, struct mp_rpc_astream, recv_tag);
		pthread_mutex_lock(&cq->mu);
		st->recv_busy = false;
		pthread_mutex_unlock(&cq->mu);
		astream_on_recv(cq, st, ok);
	}
	pthread_mutex_lock(&cq->mu);
	over = !st->main_busy && !st->recv_busy;
	if (over) {
		if (st->prev != NULL)
			st->prev->next = st->next;
		else
			cq->streams = st->next;
		if (st->next != NULL)
			st->next->prev = st->prev;
	}
	pthread_mutex_unlock(&cq->mu);
	if (!over)
		return;

	/* Nothing in flight and nothing will be: the stream is over. */
	if (st->local_err != 0) {
		err = st->local_err;
		text = st->local_msg != NULL ? strdup(st->local_msg) : NULL;
	} else if (st->status == GRPC_STATUS_OK) {
		err = 0;
	} else {
		err = rpc_status_err(st->status, st->details, &text);
	}
	pthread_mutex_lock(&st->mu);
	st->ended = true;
	gcall = st->gcall;
	st->gcall = NULL;
	pthread_mutex_unlock(&st->mu);
	/* Before on_end: the caller may stop and free the queue from there
	 * or right after, and the call must not outlive it. */
	grpc_call_unref(gcall);
	st->on_end(err, text, st->arg);
	free(text);
	astream_unref(st);
}

int mp_rpc_astream_open(struct mp_rpc_channel *ch, struct mp_rpc_cq *cq,
			const char *path, const ProtobufCMessage *req,
			const ProtobufCMessageDescriptor *resp_desc,
			int64_t timeout_ms, mp_rpc_msg_cb on_msg,
			mp_rpc_end_cb on_end, void *arg,
			struct mp_rpc_astream **st_r)
{
	struct mp_rpc_astream *st;
	grpc_op ops[5];
	grpc_call_error rc;
	gpr_timespec deadline;
	int ret;

	if (st_r != NULL)
		*st_r = NULL;
	if (ch == NULL || cq == NULL || path == NULL || req == NULL ||
	    resp_desc == NULL || on_msg == NULL || on_end == NULL ||
	    st_r == NULL)
		return MP_EINVAL;
	st = calloc(1, sizeof(*st));
	if (st == NULL)
		return MP_ENOMEM;
	st->main_tag.kind = TAG_ASTREAM_MAIN;
	st->recv_tag.kind = TAG_ASTREAM_RECV;
	st->resp_desc = resp_desc;
	st->on_msg = on_msg;
	st->on_end = on_end;
	st->arg = arg;
	st->status = GRPC_STATUS_UNKNOWN;
	st->details = grpc_empty_slice();
	grpc_metadata_array_init(&st->init_md);
	grpc_metadata_array_init(&st->trail_md);
	pthread_mutex_init(&st->mu, NULL);
	ret = rpc_pack_bb(req, &st->send_bb);
	if (ret < 0) {
		astream_free(st);
		return ret;
	}
	deadline = timeout_ms > 0 ? rpc_deadline_ms(timeout_ms)
				  : gpr_inf_future(GPR_CLOCK_MONOTONIC);

	pthread_mutex_lock(&cq->mu);
	if (cq->stopping) {
		pthread_mutex_unlock(&cq->mu);
		astream_free(st);
		return MP_ECANCELED;
	}
	st->gcall = grpc_channel_create_call(ch->channel, NULL,
					     GRPC_PROPAGATE_DEFAULTS, cq->cq,
					     grpc_slice_from_static_string(path),
					     NULL, deadline, NULL);
	if (st->gcall == NULL) {
		pthread_mutex_unlock(&cq->mu);
		astream_free(st);
		return MP_ENOMEM;
	}
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[0].flags = RPC_CLIENT_MD_FLAGS;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = st->send_bb;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &st->init_md;
	ops[4].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[4].data.recv_status_on_client.trailing_metadata = &st->trail_md;
	ops[4].data.recv_status_on_client.status = &st->status;
	ops[4].data.recv_status_on_client.status_details = &st->details;
	/* Busy before the start: the completion may come at once. */
	st->main_busy = true;
	rc = grpc_call_start_batch(st->gcall, ops, 5, &st->main_tag, NULL);
	if (rc != GRPC_CALL_OK) {
		pthread_mutex_unlock(&cq->mu);
		mp_log_error("rpc_stream_start_failed", "path=%s error=%s",
			     path, grpc_call_error_to_string(rc));
		astream_free(st);
		return MP_EIO;
	}
	/* From here on on_end will run: the queue's reference, and ours. */
	st->refs = 2;
	if (astream_post_recv_locked(cq, st) < 0) {
		/* Ends through the main batch; on_end reports this. */
		st->local_err = MP_EIO;
		st->local_msg = "cannot read the stream";
		grpc_call_cancel(st->gcall, NULL);
	}
	/* Linked before unlocking: the completion thread unlinks under mu. */
	st->next = cq->streams;
	if (st->next != NULL)
		st->next->prev = st;
	cq->streams = st;
	pthread_mutex_unlock(&cq->mu);
	*st_r = st;
	return 0;
}

void mp_rpc_astream_cancel(struct mp_rpc_astream *st)
{
	if (st == NULL)
		return;
	pthread_mutex_lock(&st->mu);
	if (!st->ended && !st->cancelled) {
		st->cancelled = true;
		grpc_call_cancel(st->gcall, NULL);
	}
	pthread_mutex_unlock(&st->mu);
}

void mp_rpc_astream_release(struct mp_rpc_astream **stp)
{
	struct mp_rpc_astream *st = stp != NULL ? *stp : NULL;

	if (st == NULL)
		return;
	*stp = NULL;
	astream_unref(st);
}

struct mp_rpc_stream {
	grpc_completion_queue *cq;   /* owned */
	grpc_call *gcall;            /* owned */
	const ProtobufCMessageDescriptor *resp_desc; /* borrowed */
	struct rpc_tag open_tag, recv_tag, status_tag;
	grpc_byte_buffer *send_bb;   /* owned */
	grpc_byte_buffer *recv_bb;   /* owned once RECV_MESSAGE completes */
	grpc_metadata_array init_md, trail_md;
	grpc_status_code status;
	grpc_slice details;          /* owned */
	bool open_busy, recv_busy, status_busy;
	bool recv_ready;             /* RECV_MESSAGE done, result not taken */
	bool status_ready;
	bool ended;
	int end_ret;                 /* 1 or MP_E* once ended */
};

static void stream_on_event(struct mp_rpc_stream *st, grpc_event ev)
{
	struct rpc_tag *tag = ev.tag;

	switch (tag->kind) {
	case TAG_STREAM_OPEN:
		st->open_busy = false;
		break;
	case TAG_STREAM_RECV:
		st->recv_busy = false;
		st->recv_ready = true;
		break;
	case TAG_STREAM_STATUS:
		st->status_busy = false;
		st->status_ready = true;
		break;
	default:
		break;
	}
}

int mp_rpc_stream_open(struct mp_rpc_channel *ch, const char *path,
		       const ProtobufCMessage *req,
		       const ProtobufCMessageDescriptor *resp_desc,
		       int64_t timeout_ms, struct mp_rpc_stream **st_r,
		       char **error_r)
{
	struct mp_rpc_stream *st;
	grpc_op ops[4];
	grpc_call_error rc;
	gpr_timespec deadline;
	int ret;

	*st_r = NULL;
	if (error_r != NULL)
		*error_r = NULL;
	if (ch == NULL || path == NULL || req == NULL || resp_desc == NULL)
		return MP_EINVAL;
	st = calloc(1, sizeof(*st));
	if (st == NULL)
		return MP_ENOMEM;
	st->resp_desc = resp_desc;
	st->open_tag.kind = TAG_STREAM_OPEN;
	st->recv_tag.kind = TAG_STREAM_RECV;
	st->status_tag.kind = TAG_STREAM_STATUS;
	st->status = GRPC_STATUS_UNKNOWN;
	st->details = grpc_empty_slice();
	grpc_metadata_array_init(&st->init_md);
	grpc_metadata_array_init(&st->trail_md);
	ret = rpc_pack_bb(req, &st->send_bb);
	if (ret < 0) {
		rpc_set_error(error_r, "cannot pack the request");
		mp_rpc_stream_close(&st);
		return ret;
	}
	st->cq = grpc_completion_queue_create_for_next(NULL);
	deadline = timeout_ms > 0 ? rpc_deadline_ms(timeout_ms)
				  : gpr_inf_future(GPR_CLOCK_MONOTONIC);
	st->gcall = grpc_channel_create_call(ch->channel, NULL,
					     GRPC_PROPAGATE_DEFAULTS, st->cq,
					     grpc_slice_from_static_string(path),
					     NULL, deadline, NULL);
	if (st->gcall == NULL) {
		mp_rpc_stream_close(&st);
		return MP_ENOMEM;
	}
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[0].flags = RPC_CLIENT_MD_FLAGS;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = st->send_bb;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &st->init_md;
	rc = grpc_call_start_batch(st->gcall, ops, 4, &st->open_tag, NULL);
	if (rc != GRPC_CALL_OK) {
		rpc_set_error(error_r, "cannot start the call: %s",
			      grpc_call_error_to_string(rc));
		mp_rpc_stream_close(&st);
		return MP_EIO;
	}
	st->open_busy = true;
	*st_r = st;
	return 0;
}

static int stream_end(struct mp_rpc_stream *st, char **error_r)
{
	if (!st->ended) {
		st->ended = true;
		st->end_ret = st->status == GRPC_STATUS_OK
			? 1 : rpc_status_err(st->status, st->details, NULL);
	}
	/* Every caller that sees the error gets its own copy of the text. */
	if (st->end_ret < 0 && st->status != GRPC_STATUS_OK)
		(void)rpc_status_err(st->status, st->details, error_r);
	return st->end_ret;
}

int mp_rpc_stream_next(struct mp_rpc_stream *st, int64_t wait_ms,
		       ProtobufCMessage **msg_r, char **error_r)
{
	gpr_timespec deadline;
	grpc_call_error rc;
	grpc_op op;
	int ret;

	*msg_r = NULL;
	if (error_r != NULL)
		*error_r = NULL;
	if (st->ended)
		return stream_end(st, error_r);
	deadline = wait_ms > 0 ? rpc_deadline_ms(wait_ms)
			       : gpr_inf_future(GPR_CLOCK_MONOTONIC);
	/* Bounded: each turn either returns or waits for one event, and
	 * the wait ends at the deadline. */
	for (;;) {
		if (st->status_ready)
			return stream_end(st, error_r);
		if (st->recv_ready) {
			grpc_byte_buffer *bb = st->recv_bb;

			st->recv_ready = false;
			st->recv_bb = NULL;
			if (bb != NULL) {
				ret = rpc_unpack_bb(bb, st->resp_desc, msg_r);
				grpc_byte_buffer_destroy(bb);
				if (ret < 0)
					rpc_set_error(error_r,
						      "malformed message");
				return ret;
			}
			/* No message: the stream is over, fetch why. */
			memset(&op, 0, sizeof(op));
			op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
			op.data.recv_status_on_client.trailing_metadata =
				&st->trail_md;
			op.data.recv_status_on_client.status = &st->status;
			op.data.recv_status_on_client.status_details =
				&st->details;
			rc = grpc_call_start_batch(st->gcall, &op, 1,
						   &st->status_tag, NULL);
			if (rc != GRPC_CALL_OK) {
				st->ended = true;
				st->end_ret = MP_EIO;
				rpc_set_error(error_r, "cannot read status: %s",
					      grpc_call_error_to_string(rc));
				return MP_EIO;
			}
			st->status_busy = true;
			continue;
		}
		if (!st->recv_busy && !st->status_busy) {
			memset(&op, 0, sizeof(op));
			op.op = GRPC_OP_RECV_MESSAGE;
			op.data.recv_message.recv_message = &st->recv_bb;
			rc = grpc_call_start_batch(st->gcall, &op, 1,
						   &st->recv_tag, NULL);
			if (rc != GRPC_CALL_OK) {
				st->ended = true;
				st->end_ret = MP_EIO;
				rpc_set_error(error_r, "cannot read: %s",
					      grpc_call_error_to_string(rc));
				return MP_EIO;
			}
			st->recv_busy = true;
		}
		grpc_event ev = grpc_completion_queue_next(st->cq, deadline,
							   NULL);
		if (ev.type == GRPC_QUEUE_TIMEOUT)
			return MP_ETIMEDOUT;
		if (ev.type == GRPC_OP_COMPLETE)
			stream_on_event(st, ev);
	}
}

void mp_rpc_stream_close(struct mp_rpc_stream **stp)
{
	struct mp_rpc_stream *st = *stp;

	if (st == NULL)
		return;
	*stp = NULL;
	if (st->gcall != NULL) {
		/* Cancelling completes every batch still in flight; the
		 * buffers they write into live until the queue is drained. */
		grpc_call_cancel(st->gcall, NULL);
		while (st->open_busy || st->recv_busy || st->status_busy) {
			grpc_event ev = grpc_completion_queue_next(
				st->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
				NULL);
			if (ev.type != GRPC_OP_COMPLETE)
				break;
			stream_on_event(st, ev);
		}
		grpc_call_unref(st->gcall);
	}
	if (st->cq != NULL) {
		grpc_completion_queue_shutdown(st->cq);
		rpc_drain_cq(st->cq);
		grpc_completion_queue_destroy(st->cq);
	}
	if (st->recv_bb != NULL)
		grpc_byte_buffer_destroy(st->recv_bb);
	if (st->send_bb != NULL)
		grpc_byte_buffer_destroy(st->send_bb);
	grpc_metadata_array_destroy(&st->init_md);
	grpc_metadata_array_destroy(&st->trail_md);
	grpc_slice_unref(st->details);
	free(st);
}
