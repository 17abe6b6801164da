"""kill -9 of a frontend in the middle of 8 concurrent SMTP senders: every
message that got its final 250 is stored exactly once; a message that did
not get it is stored at most once (the client never retried it here)."""
import re
import smtplib
import threading
import time
import uuid

from test_smtp import PASSWORD, bodies, ok, unique_domain

SENDERS = 8
RUN_SECONDS = 3.0      # load before the kill
MAX_PER_SENDER = 2000  # bound on each sender's loop
PAUSE = 0.05           # between messages: keeps the count to read back small


def sender(port, rcpt, acked, attempted, stop, lock):
    n = 0
    while not stop.is_set() and n < MAX_PER_SENDER:
        try:
            s = smtplib.SMTP("127.0.0.1", port, timeout=15)
            s.ehlo("load.test")
        except OSError:
            return  # the frontend is gone
        try:
            while not stop.is_set() and n < MAX_PER_SENDER:
                token = uuid.uuid4().hex
                msg = (f"Subject: load {token}\r\nMessage-ID: <{token}@load.test>"
                       f"\r\n\r\nbody {token}\r\n").encode()
                with lock:
                    attempted.add(token)
                n += 1
                s.sendmail("load@remote.test", [rcpt], msg)  # raises unless 250
                with lock:
                    acked.add(token)
                time.sleep(PAUSE)
        except (OSError, smtplib.SMTPException):
            return
        finally:
            try:
                s.close()
            except OSError:
                pass


def test_kill9_frontend_under_load(cluster):
    dom = unique_domain()
    ok(cluster, "domain", "add", dom)
    rcpt = f"load@{dom}"
    ok(cluster, "user", "add", rcpt, input=PASSWORD + "\n")
    port = int(cluster.env["SMTP_PORT"])

    acked, attempted, lock, stop = set(), set(), threading.Lock(), threading.Event()
    threads = [threading.Thread(target=sender,
                                args=(port, rcpt, acked, attempted, stop, lock))
               for _ in range(SENDERS)]
    for t in threads:
        t.start()
    time.sleep(RUN_SECONDS)
    cluster.kill9_frontend(0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a sender did not stop"
    assert len(acked) > 0, "no message was acknowledged before the kill"

    stored = {}
    for body in bodies(cluster, rcpt):
        m = re.search(rb"Subject: load ([0-9a-f]{32})", body)
        assert m, body[:300]
        tok = m.group(1).decode()
        stored[tok] = stored.get(tok, 0) + 1
    lost = acked - set(stored)
    assert not lost, f"{len(lost)} acknowledged messages lost"
    dup = {t: c for t, c in stored.items() if c != 1}
    assert not dup, f"messages stored more than once: {dup}"
    assert set(stored) <= attempted

    # The restarted frontend serves again.
    cluster.restart_frontend(0)
    with smtplib.SMTP("127.0.0.1", int(cluster.env["SMTP_PORT"]), timeout=30) as s:
        s.sendmail("after@remote.test", [rcpt], b"Subject: after\r\n\r\nafter\r\n")
    assert any(b"Subject: after" in b for b in bodies(cluster, rcpt))
