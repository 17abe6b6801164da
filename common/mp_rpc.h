/*
 * mp_rpc: the gRPC glue every daemon shares. The only code in Merpati that
 * includes <grpc/grpc.h>; everything else sees this interface and protobuf-c
 * messages.
 *
 * Server: methods of a protobuf-c service descriptor are registered as
 * "/<package>.<Service>/<Method>"; a pool of threads, each with its own
 * completion queue and pre-posted call slots, unpacks each request and calls
 * the method's handler. A handler answers exactly once with mp_rpc_reply,
 * from any thread and at any later time (the store answers from its commit
 * thread), so a server thread never waits for a disk.
 *
 * Client: channels, a blocking unary call (merpatictl, tests), asynchronous
 * unary calls completed on a client completion thread (frontends), a
 * blocking server-streaming reader, and asynchronous server streams on the
 * same completion thread.
 *
 * Errors are MP_E* codes (mp_error.h), mapped to and from gRPC status codes;
 * the human message travels as the status details.
 *
 * Call mp_rpc_init() once, after blocking SIGINT/SIGTERM in the main thread
 * (gRPC threads inherit the mask) and before any other mp_rpc_* call.
 */
#ifndef MP_RPC_H
#define MP_RPC_H

#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

#define MP_RPC_DEFAULT_MAX_MSG (64u * 1024 * 1024)

void mp_rpc_init(void);      /* grpc_init + gRPC log lines into mp_log */
void mp_rpc_shutdown(void);  /* grpc_shutdown */

/* ------------------------------------------------------------- server */

struct mp_rpc_server;
struct mp_rpc_call;

/* req is owned by the call and freed after the reply (unary) or when the
 * call is released (streaming); handlers may keep pointers into it until
 * then. */
typedef void (*mp_rpc_handler)(struct mp_rpc_call *call,
			       const ProtobufCMessage *req, void *ctx);

struct mp_rpc_method {
	const char *name;          /* method name in the service descriptor */
	mp_rpc_handler handler;
	int server_streaming;      /* 1: rpc X(...) returns (stream ...) */
};

struct mp_rpc_server_opts {
	const char *listen;        /* "127.0.0.1:7000"; port 0 = pick a free one */
	int threads;               /* completion-queue threads; 0 = 2 */
	size_t max_msg;            /* max message both ways; 0 = default */
	int slots;                 /* pre-posted calls per method per thread; 0 = 16 */
};

/* Starts serving. Every method of svc must be in methods (or the call fails
 * with MP_EINVAL naming the missing one) so no method is silently
 * UNIMPLEMENTED. */
int mp_rpc_server_start(const ProtobufCServiceDescriptor *svc,
			const struct mp_rpc_method *methods, size_t n,
			void *ctx, const struct mp_rpc_server_opts *opts,
			struct mp_rpc_server **srv_r, char **error_r);
/* Several services on one port, each with its own handler context. */
struct mp_rpc_service {
	const ProtobufCServiceDescriptor *svc;
	const struct mp_rpc_method *methods;
	size_t n;
	void *ctx;
};
int mp_rpc_server_start_multi(const struct mp_rpc_service *svcs, size_t nsvcs,
			      const struct mp_rpc_server_opts *opts,
			      struct mp_rpc_server **srv_r, char **error_r);
int mp_rpc_server_port(const struct mp_rpc_server *srv);
/* Stops accepting, cancels live calls, waits for the threads, frees. Safe on
 * NULL; sets *srv to NULL. Every streaming call's on_close has run and every
 * pending unary reply must have been given before this returns, so callers
 * stop their own producers (the store) after this. */
void mp_rpc_server_stop(struct mp_rpc_server **srv);

/* Answer a unary call: resp when err == 0 (resp may then not be NULL),
 * otherwise the error and a message for people (may be NULL). Exactly once
 * per unary call; the call is gone afterwards. The response is packed before
 * this returns, so resp may be freed right after. */
void mp_rpc_reply(struct mp_rpc_call *call, const ProtobufCMessage *resp,
		  int err, const char *message);

/* Peer address of a call ("ipv4:127.0.0.1:5555"), valid while the call is. */
const char *mp_rpc_call_peer(const struct mp_rpc_call *call);

/* Server streaming. The handler takes ownership of the call: it may send any
 * number of messages (queued; at most max_queue waiting, beyond which
 * mp_rpc_stream_send returns MP_ENOSPC and sends nothing), then finish.
 * on_close runs exactly once, on a server thread, when the stream is over
 * (client cancelled or went away, server finished, or server stopping).
 * After on_close has been called the owner calls mp_rpc_stream_release()
 * once it no longer touches the call (it may do so inside on_close). Sends
 * after close return MP_ECANCELED. */
typedef void (*mp_rpc_close_cb)(struct mp_rpc_call *call, void *arg);
void mp_rpc_stream_start(struct mp_rpc_call *call, size_t max_queue,
			 mp_rpc_close_cb on_close, void *arg);
int mp_rpc_stream_send(struct mp_rpc_call *call, const ProtobufCMessage *msg);
void mp_rpc_stream_finish(struct mp_rpc_call *call, int err,
			  const char *message);
void mp_rpc_stream_release(struct mp_rpc_call *call);

/* ------------------------------------------------------------- client */

struct mp_rpc_channel;

/* target: "127.0.0.1:7000" (insecure; TLS comes with the cluster issue). */
int mp_rpc_channel_open(const char *target, size_t max_msg,
			struct mp_rpc_channel **ch_r);
void mp_rpc_channel_close(struct mp_rpc_channel **ch);
const char *mp_rpc_channel_target(const struct mp_rpc_channel *ch);

/* "/merpati.v1.MailStore/Append" from a descriptor and a method name, into
 * out (size outlen). Returns out, or NULL when the name is not a method. */
const char *mp_rpc_method_path(const ProtobufCServiceDescriptor *svc,
			       const char *method, char *out, size_t outlen);

/* Blocking unary call. 0 with *resp_r (free with
 * protobuf_c_message_free_unpacked(resp, NULL)), or MP_E* with *error_r
 * (malloc'd text, may be NULL; caller frees). timeout_ms 0 = 30 s. */
int mp_rpc_call(struct mp_rpc_channel *ch, const char *path,
		const ProtobufCMessage *req,
		const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
		ProtobufCMessage **resp_r, char **error_r);

/* Asynchronous unary calls, completed on the completion thread of a
 * struct mp_rpc_cq. The callback owns resp (NULL when err != 0) and runs
 * exactly once if mp_rpc_call_async returned 0, never if it failed. */
struct mp_rpc_cq;
typedef void (*mp_rpc_done_cb)(int err, const char *error,
			       ProtobufCMessage *resp, void *arg);
int mp_rpc_cq_start(struct mp_rpc_cq **cq_r);
/* Cancels calls and streams still in flight (their callbacks run with
 * MP_ECANCELED before this returns; when called from one of its own
 * callbacks, right after that callback), stops the thread, frees. */
void mp_rpc_cq_stop(struct mp_rpc_cq **cq);
int mp_rpc_call_async(struct mp_rpc_channel *ch, struct mp_rpc_cq *cq,
		      const char *path, const ProtobufCMessage *req,
		      const ProtobufCMessageDescriptor *resp_desc,
		      int64_t timeout_ms, mp_rpc_done_cb cb, void *arg);

/* Asynchronous server-streaming reader on a struct mp_rpc_cq: for a
 * process that keeps thousands of streams open (the frontend's watches)
 * with no thread per stream. Callbacks run on the queue's completion
 * thread, one at a time, never with a lock of mp_rpc's held: on_msg for
 * each message in order (it owns msg: free it with
 * protobuf_c_message_free_unpacked), then on_end exactly once, after the
 * last on_msg, with 0 when the server ended the stream with OK, or MP_E*
 * and a message for people (error may be NULL) otherwise: MP_ECANCELED
 * after mp_rpc_astream_cancel or mp_rpc_cq_stop, MP_EUNAVAIL when the peer
 * is down, MP_EPROTO for a message that does not unpack (the call is
 * cancelled then). Callbacks run only if open returned 0.
 *
 * The caller holds a handle (*st_r) until mp_rpc_astream_release, which
 * it must call exactly once, from any thread, before or after on_end (also
 * inside a callback); releasing does not end the stream. The queue keeps
 * its own reference until on_end has returned. timeout_ms 0 = no deadline.
 * 0, MP_EINVAL, MP_ENOMEM, MP_ECANCELED (the queue is stopping), MP_EIO. */
struct mp_rpc_astream;
typedef void (*mp_rpc_msg_cb)(ProtobufCMessage *msg, void *arg);
typedef void (*mp_rpc_end_cb)(int err, const char *error, void *arg);
int mp_rpc_astream_open(struct mp_rpc_channel *ch, struct mp_rpc_cq *cq,
			const char *path, const ProtobufCMessage *req,
			const ProtobufCMessageDescriptor *resp_desc,
			int64_t timeout_ms, mp_rpc_msg_cb on_msg,
			mp_rpc_end_cb on_end, void *arg,
			struct mp_rpc_astream **st_r);
/* Ends the stream: no on_msg starts after this returns (one may be running
 * on the completion thread right now), and on_end follows (with
 * MP_ECANCELED unless the stream had already ended). Never blocks; any
 * thread, any time while the handle is held; nothing once ended. */
void mp_rpc_astream_cancel(struct mp_rpc_astream *st);
/* Drops the caller's handle; sets *st to NULL; safe on NULL. */
void mp_rpc_astream_release(struct mp_rpc_astream **st);

/* Server-streaming reader (blocking). timeout_ms 0 = no deadline. */
struct mp_rpc_stream;
int mp_rpc_stream_open(struct mp_rpc_channel *ch, const char *path,
		       const ProtobufCMessage *req,
		       const ProtobufCMessageDescriptor *resp_desc,
		       int64_t timeout_ms, struct mp_rpc_stream **st_r,
		       char **error_r);
/* 0 with *msg_r; 1 when the stream ended with OK; MP_ETIMEDOUT when nothing
 * came within wait_ms (the stream stays usable); other MP_E* for the final
 * status (with *error_r). */
int mp_rpc_stream_next(struct mp_rpc_stream *st, int64_t wait_ms,
		       ProtobufCMessage **msg_r, char **error_r);
void mp_rpc_stream_close(struct mp_rpc_stream **st); /* cancels; safe twice */

/* ------------------------------------------------ protobuf-c helpers */

/* Pack into a malloc'd buffer. 0 or MP_ENOMEM. */
int mp_pb_pack(const ProtobufCMessage *msg, uint8_t **out_r, size_t *len_r);
/* Unpack; MP_EPROTO when the bytes are not a valid message. */
int mp_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
		 size_t len, ProtobufCMessage **msg_r);

#endif
