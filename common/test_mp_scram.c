/*
 * Tests of mp_scram: the primitives against published vectors (SHA-256
 * FIPS 180-2 "abc", HMAC-SHA-256 RFC 4231 §4.3, PBKDF2-HMAC-SHA-256
 * RFC 7914 §11), base64 (RFC 4648 §10 vectors, every byte value, strict
 * rejection of bad characters, padding and non-canonical encodings, the
 * output cap), stored records (make -> parse round trip whose keys match a
 * derivation done here, rejection of malformed records), and the RFC 7677
 * §3 SCRAM-SHA-256 example computed from the primitives: ClientProof and
 * ServerSignature byte for byte. (The same example driven through the SASL
 * server is in frontend/auth/test_fe_sasl.c: common may not link it.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp_error.h"
#include "mp_scram.h"

static void hex_to(const char *hex, uint8_t *out, size_t len)
{
	assert_int_equal(strlen(hex), 2 * len);
	for (size_t i = 0; i < len; i++) {
		unsigned v = 0;
		assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t)v;
	}
}

/* ------------------------------------------------------------ primitives */

static void test_sha256_hmac_pbkdf2(void **state)
{
	uint8_t out[MP_SHA256_LEN], want[MP_SHA256_LEN];

	assert_int_equal(mp_sha256("abc", 3, out), 0);
	hex_to("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", want, 32);
	assert_memory_equal(out, want, 32);

	/* RFC 4231 §4.3, test case 2. */
	const char *data = "what do ya want for nothing?";
	assert_int_equal(mp_hmac_sha256("Jefe", 4, data, strlen(data), out), 0);
	hex_to("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", want, 32);
	assert_memory_equal(out, want, 32);

	/* RFC 7914 §11: P="passwd", S="salt", c=1; the first 32 bytes of its
	 * 64-byte output are PBKDF2's first block, which is what we make. */
	assert_int_equal(mp_pbkdf2_sha256("passwd", 6, (const uint8_t *)"salt", 4, 1, out), 0);
	hex_to("55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc", want, 32);
	assert_memory_equal(out, want, 32);

	/* Refused parameters. */
	assert_int_equal(mp_pbkdf2_sha256("pw", 2, (const uint8_t *)"s", 1, 0, out), MP_EINVAL);
	assert_int_equal(mp_pbkdf2_sha256("pw", 2, (const uint8_t *)"s", 1,
					  MP_SCRAM_ITER_MAX + 1, out), MP_EINVAL);
}

static void test_misc_primitives(void **state)
{
	uint8_t a[32], b[32];
	assert_int_equal(mp_random_bytes(a, sizeof(a)), 0);
	assert_int_equal(mp_random_bytes(b, sizeof(b)), 0);
	assert_memory_not_equal(a, b, sizeof(a));

	memcpy(b, a, sizeof(a));
	assert_true(mp_const_eq(a, b, sizeof(a)));
	b[31] ^= 1;
	assert_false(mp_const_eq(a, b, sizeof(a)));
	b[31] ^= 1;
	b[0] ^= 0x80;
	assert_false(mp_const_eq(a, b, sizeof(a)));
	assert_true(mp_const_eq(a, b, 0));

	memset(a, 0x5a, sizeof(a));
	mp_wipe(a, sizeof(a));
	for (size_t i = 0; i < sizeof(a); i++)
		assert_int_equal(a[i], 0);
	mp_wipe(NULL, 10);
}

/* ------------------------------------------------------------ base64 */

static void test_base64_vectors(void **state)
{
	/* RFC 4648 §10. */
	static const struct {
		const char *raw, *enc;
	} t[] = {
		{ "", "" },         { "f", "Zg==" },        { "fo", "Zm8=" },
		{ "foo", "Zm9v" },  { "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" },
		{ "foobar", "Zm9vYmFy" },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char enc[32];
		size_t n = mp_base64_encode(t[i].raw, strlen(t[i].raw), enc);
		assert_int_equal(n, strlen(t[i].enc));
		assert_string_equal(enc, t[i].enc);
		uint8_t dec[32];
		size_t dn = 99;
		assert_int_equal(mp_base64_decode(t[i].enc, strlen(t[i].enc), dec, sizeof(dec),
						  &dn), 0);
		assert_int_equal(dn, strlen(t[i].raw));
		assert_memory_equal(dec, t[i].raw, dn);
		/* Exactly enough room is enough; one byte less is not. */
		if (dn > 0) {
			assert_int_equal(mp_base64_decode(t[i].enc, strlen(t[i].enc), dec, dn,
							  &dn), 0);
			assert_int_equal(mp_base64_decode(t[i].enc, strlen(t[i].enc), dec,
							  dn - 1, &dn), MP_ETOOBIG);
		}
	}
	/* The whole alphabet, and every byte value at every offset. */
	uint8_t all[256 + 2];
	for (int i = 0; i < 256; i++)
		all[i] = (uint8_t)i;
	all[256] = 0;
	all[257] = 0xff;
	for (size_t off = 0; off < 3; off++) {
		for (size_t len = 0; len + off <= sizeof(all); len += 1 + len / 7) {
			char enc[4 * ((sizeof(all) + 2) / 3) + 1];
			size_t n = mp_base64_encode(all + off, len, enc);
			assert_int_equal(n, 4 * ((len + 2) / 3));
			assert_int_equal(strlen(enc), n);
			uint8_t dec[sizeof(all)];
			size_t dn = 0;
			assert_int_equal(mp_base64_decode(enc, n, dec, sizeof(dec), &dn), 0);
			assert_int_equal(dn, len);
			assert_memory_equal(dec, all + off, len);
		}
	}
	char enc[8];
	mp_base64_encode("\xfb\xff\xbf", 3, enc);
	assert_string_equal(enc, "+/+/");
}

static void test_base64_rejects(void **state)
{
	static const char *const bad[] = {
		"Z", "Zg", "Zg=", "Zg===", "Zm9vY",         /* length not a multiple of 4 */
		"Z===", "====", "=Zg=", "Z=g=",             /* padding in the wrong place */
		"Zg==Zg==", "Zm8=Zm8=", "Zg==Zm9v",         /* data after padding */
		"Zh==", "Zm9=", "Zm+=", "Zm8/Zh==",         /* non-canonical: bits in padding */
		"Zm9v\n", "Zm 9", "Zm9\t", "Zm9\r",         /* whitespace */
		"Zm9-", "Zm9_", "Zm9.", "Zm9*", "Zm\x80v",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint8_t out[16];
		size_t n = 0;
		int ret = mp_base64_decode(bad[i], strlen(bad[i]), out, sizeof(out), &n);
		if (ret != MP_EINVAL)
			fail_msg("'%s' gave %d", bad[i], ret);
	}
	/* An embedded NUL (length given explicitly). */
	uint8_t out[16];
	size_t n = 0;
	assert_int_equal(mp_base64_decode("Zm\0v", 4, out, sizeof(out), &n), MP_EINVAL);
	assert_int_equal(mp_base64_decode("Zg=\0", 4, out, sizeof(out), &n), MP_EINVAL);
}

/* ------------------------------------------------------------ stored records */

static void check_keys(const char *password, const struct mp_scram_cred *c)
{
	uint8_t salted[32], ckey[32], stored[32], server[32];
	assert_int_equal(mp_pbkdf2_sha256(password, strlen(password), c->salt, c->salt_len,
					  c->iter, salted), 0);
	assert_int_equal(mp_hmac_sha256(salted, 32, "Client Key", 10, ckey), 0);
	assert_int_equal(mp_sha256(ckey, 32, stored), 0);
	assert_int_equal(mp_hmac_sha256(salted, 32, "Server Key", 10, server), 0);
	assert_memory_equal(stored, c->stored_key, 32);
	assert_memory_equal(server, c->server_key, 32);
}

static void test_make_parse(void **state)
{
	char *rec = NULL, *rec2 = NULL;
	struct mp_scram_cred c;
	const char *err = NULL;

	assert_int_equal(mp_scram_make("pencil", 6, 0, &rec), 0);
	assert_int_equal(strncmp(rec, "SCRAM-SHA-256$4096:", 19), 0);
	assert_int_equal(mp_scram_parse(rec, &c, &err), 0);
	assert_int_equal(c.iter, MP_SCRAM_ITER_DEFAULT);
	assert_int_equal(c.salt_len, 16);
	check_keys("pencil", &c);

	/* A fresh salt every time. */
	assert_int_equal(mp_scram_make("pencil", 6, 0, &rec2), 0);
	assert_string_not_equal(rec, rec2);
	free(rec);
	free(rec2);
	rec = NULL;

	assert_int_equal(mp_scram_make("p\xc3\xa4ss", 5, 5000, &rec), 0);
	assert_int_equal(strncmp(rec, "SCRAM-SHA-256$5000:", 19), 0);
	assert_int_equal(mp_scram_parse(rec, &c, &err), 0);
	assert_int_equal(c.iter, 5000);
	check_keys("p\xc3\xa4ss", &c);
	free(rec);
	rec = NULL;

	/* Only len bytes of the password count. */
	assert_int_equal(mp_scram_make("pencilXYZ", 6, 1, &rec), 0);
	assert_int_equal(mp_scram_parse(rec, &c, &err), 0);
	check_keys("pencil", &c);
	free(rec);
	rec = NULL;

	assert_int_not_equal(mp_scram_make("pw", 2, MP_SCRAM_ITER_MAX + 1, &rec), 0);
	assert_null(rec);

	/* A record written by hand (the RFC 7677 salt) parses to its parts. */
	const char *hand = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
			   "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=:"
			   "//79/Pv6+fj39vX08/Lx8O/u7ezr6uno5+bl5OPi4eA=";
	assert_int_equal(mp_scram_parse(hand, &c, &err), 0);
	assert_int_equal(c.iter, 4096);
	assert_int_equal(c.salt_len, 16);
	for (int i = 0; i < 32; i++) {
		assert_int_equal(c.stored_key[i], i);
		assert_int_equal(c.server_key[i], 255 - i);
	}
}

static void test_parse_rejects(void **state)
{
#define SK "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define VK "//79/Pv6+fj39vX08/Lx8O/u7ezr6uno5+bl5OPi4eA="
#define SALT "W22ZaJ0SNY7soEsUEjb6gQ=="
	static const char *const bad[] = {
		"",
		"SCRAM-SHA-256",
		"SCRAM-SHA-256$",
		"SCRAM-SHA-1$4096:" SALT "$" SK ":" VK,
		"scram-sha-256$4096:" SALT "$" SK ":" VK,
		"{SCRAM-SHA-256}4096:" SALT "$" SK ":" VK,
		"SCRAM-SHA-256$:" SALT "$" SK ":" VK,
		"SCRAM-SHA-256$0:" SALT "$" SK ":" VK,
		"SCRAM-SHA-256$04096:" SALT "$" SK ":" VK,
		"SCRAM-SHA-256$-1:" SALT "$" SK ":" VK,
		"SCRAM-SHA-256$+4096:" SALT "$" SK ":" VK,
		"SCRAM-SHA-256$ 4096:" SALT "$" SK ":" VK,
		"SCRAM-SHA-256$4096x:" SALT "$" SK ":" VK,
		"SCRAM-SHA-256$1000001:" SALT "$" SK ":" VK,
		"SCRAM-SHA-256$99999999999999999999999:" SALT "$" SK ":" VK,
		"SCRAM-SHA-256$4096" SALT "$" SK ":" VK,
		"SCRAM-SHA-256$4096:$" SK ":" VK,                   /* empty salt */
		"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ$" SK ":" VK,  /* no padding */
		"SCRAM-SHA-256$4096:W22Z!J0SNY7soEsUEjb6gQ==$" SK ":" VK,
		"SCRAM-SHA-256$4096:" SALT SK ":" VK,               /* no '$' */
		"SCRAM-SHA-256$4096:" SALT "$" SK VK,               /* no ':' */
		"SCRAM-SHA-256$4096:" SALT "$" SK ":",
		"SCRAM-SHA-256$4096:" SALT "$:" VK,
		"SCRAM-SHA-256$4096:" SALT "$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==:" VK,
		"SCRAM-SHA-256$4096:" SALT "$" SK ":" VK "AAAA",   /* 35 bytes */
		"SCRAM-SHA-256$4096:" SALT "$" SK ":" VK "\n",
		"SCRAM-SHA-256$4096:" SALT "$" SK ":" VK " ",
		"SCRAM-SHA-256$4096:" SALT "$" SK ":" VK "$x",
		"SCRAM-SHA-256$4096:" SALT "$" SK ":" SK ":" VK,
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct mp_scram_cred c;
		const char *err = NULL;
		int ret = mp_scram_parse(bad[i], &c, &err);
		if (ret != MP_EINVAL)
			fail_msg("record %zu '%s' gave %d", i, bad[i], ret);
		assert_non_null(err);
	}
	struct mp_scram_cred c;
	const char *err = NULL;
	assert_int_equal(mp_scram_parse(NULL, &c, &err), MP_EINVAL);

	/* Salts of 1..MP_SCRAM_SALT_MAX bytes parse; one byte more does not. */
	for (size_t len = 1; len <= MP_SCRAM_SALT_MAX + 1; len++) {
		uint8_t salt[MP_SCRAM_SALT_MAX + 1];
		memset(salt, 0xa5, sizeof(salt));
		char salt64[4 * ((sizeof(salt) + 2) / 3) + 1];
		mp_base64_encode(salt, len, salt64);
		char rec[256];
		int n = snprintf(rec, sizeof(rec), "SCRAM-SHA-256$1000000:%s$" SK ":" VK, salt64);
		assert_true(n > 0 && (size_t)n < sizeof(rec));
		int ret = mp_scram_parse(rec, &c, &err);
		if (len <= MP_SCRAM_SALT_MAX) {
			assert_int_equal(ret, 0);
			assert_int_equal(c.salt_len, len);
			assert_memory_equal(c.salt, salt, len);
			assert_int_equal(c.iter, MP_SCRAM_ITER_MAX);
		} else {
			assert_int_equal(ret, MP_EINVAL);
		}
	}
#undef SK
#undef VK
#undef SALT
}

/* ------------------------------------------------------------ RFC 7677 §3 */

static void test_rfc7677_example(void **state)
{
	const char *salt64 = "W22ZaJ0SNY7soEsUEjb6gQ==";
	const char *client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
	const char *server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
				   "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
	const char *final_wo_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";

	uint8_t salt[32];
	size_t salt_len = 0;
	assert_int_equal(mp_base64_decode(salt64, strlen(salt64), salt, sizeof(salt), &salt_len), 0);
	assert_int_equal(salt_len, 16);

	/* RFC 5802 §3. */
	uint8_t salted[32], ckey[32], stored[32], skey[32], csig[32], ssig[32], proof[32];
	assert_int_equal(mp_pbkdf2_sha256("pencil", 6, salt, salt_len, 4096, salted), 0);
	assert_int_equal(mp_hmac_sha256(salted, 32, "Client Key", 10, ckey), 0);
	assert_int_equal(mp_sha256(ckey, 32, stored), 0);
	assert_int_equal(mp_hmac_sha256(salted, 32, "Server Key", 10, skey), 0);
	char am[512];
	int n = snprintf(am, sizeof(am), "%s,%s,%s", client_first_bare, server_first,
			 final_wo_proof);
	assert_true(n > 0 && (size_t)n < sizeof(am));
	assert_int_equal(mp_hmac_sha256(stored, 32, am, (size_t)n, csig), 0);
	assert_int_equal(mp_hmac_sha256(skey, 32, am, (size_t)n, ssig), 0);
	for (int i = 0; i < 32; i++)
		proof[i] = ckey[i] ^ csig[i];

	char enc[64];
	mp_base64_encode(proof, 32, enc);
	assert_string_equal(enc, "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
	mp_base64_encode(ssig, 32, enc);
	assert_string_equal(enc, "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");

	/* The server's check: H(proof XOR ClientSignature) == StoredKey. */
	uint8_t k[32], hk[32];
	for (int i = 0; i < 32; i++)
		k[i] = proof[i] ^ csig[i];
	assert_int_equal(mp_sha256(k, 32, hk), 0);
	assert_true(mp_const_eq(hk, stored, 32));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sha256_hmac_pbkdf2),
		cmocka_unit_test(test_misc_primitives),
		cmocka_unit_test(test_base64_vectors),
		cmocka_unit_test(test_base64_rejects),
		cmocka_unit_test(test_make_parse),
		cmocka_unit_test(test_parse_rejects),
		cmocka_unit_test(test_rfc7677_example),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
