/* Unit tests of the protocol library: SHA-256/HMAC known answers, codec round trips,
 * auth proofs, the cpio writer. Prints "N passed, N failed". */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mbp_cpio.h"
#include "mbp_proto.h"

static int passed, failed;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (cond) {                                                                        \
			passed++;                                                                  \
		} else {                                                                           \
			failed++;                                                                  \
			fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);            \
		}                                                                                  \
	} while (0)

static void hex(const uint8_t *d, size_t n, char *out)
{
	mbp_hex_encode(d, n, out);
}

static void test_sha(void)
{
	uint8_t o[32];
	char h[65];
	mbp_sha256("abc", 3, o);
	hex(o, 32, h);
	CHECK(strcmp(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
	mbp_sha256("", 0, o);
	hex(o, 32, h);
	CHECK(strcmp(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0);
	const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	mbp_sha256(m, strlen(m), o);
	hex(o, 32, h);
	CHECK(strcmp(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0);
	/* incremental == one shot */
	mbp_sha256_ctx s;
	mbp_sha256_init(&s);
	for (size_t i = 0; i < strlen(m); i++)
		mbp_sha256_update(&s, m + i, 1);
	uint8_t o2[32];
	mbp_sha256_final(&s, o2);
	CHECK(memcmp(o, o2, 32) == 0);
	/* RFC 4231 test case 2 */
	mbp_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, o);
	hex(o, 32, h);
	CHECK(strcmp(h, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843") == 0);
	/* RFC 4231 test case 6: key longer than the block */
	uint8_t key[131];
	memset(key, 0xaa, sizeof(key));
	const char *d6 = "Test Using Larger Than Block-Size Key - Hash Key First";
	mbp_hmac_sha256(key, sizeof(key), d6, strlen(d6), o);
	hex(o, 32, h);
	CHECK(strcmp(h, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54") == 0);
	CHECK(mbp_ct_equal("abc", "abc", 3));
	CHECK(!mbp_ct_equal("abc", "abd", 3));
}

static void test_codec(void)
{
	json_t *h = json_pack("{s:s,s:i}", "op", "read", "n", 42);
	uint8_t *buf;
	size_t len;
	CHECK(mbp_encode(h, "payload", 7, &buf, &len, NULL) == 0);
	json_t *d;
	const uint8_t *p;
	size_t pl;
	CHECK(mbp_decode(buf, len, &d, &p, &pl, NULL) == 0);
	CHECK(json_equal(h, d));
	CHECK(pl == 7 && memcmp(p, "payload", 7) == 0);
	json_decref(d);
	mbp_err err = { 0 };
	CHECK(mbp_decode(buf, 3, &d, &p, &pl, &err) == -EBADMSG);
	buf[3] = 0xff; /* header longer than the message */
	CHECK(mbp_decode(buf, len, &d, &p, &pl, &err) == -EBADMSG);
	free(buf);
	json_decref(h);
	json_t *arr = json_array();
	CHECK(mbp_encode(arr, NULL, 0, &buf, &len, &err) == -EINVAL);
	json_decref(arr);

	json_t *e = mbp_reply_error(-ENOENT, "no %s", "thing");
	CHECK(mbp_reply_check(e, &err) == -ENOENT);
	CHECK(strcmp(err.msg, "no thing") == 0);
	json_decref(e);
	json_t *ok = mbp_reply_ok();
	CHECK(mbp_reply_check(ok, NULL) == 0);
	json_decref(ok);
	CHECK(mbp_errno_from_name("EACCES") == -EACCES);
}

static void test_auth(void)
{
	uint8_t hn[32], an[32], a1[32], a2[32], h1[32];
	memset(hn, 1, 32);
	memset(an, 2, 32);
	mbp_auth_agent_proof("secret-token-0123", 17, hn, an, a1);
	mbp_auth_agent_proof("secret-token-0124", 17, hn, an, a2);
	mbp_auth_host_proof("secret-token-0123", 17, hn, an, h1);
	CHECK(memcmp(a1, a2, 32) != 0); /* another token, another proof */
	CHECK(memcmp(a1, h1, 32) != 0); /* the two directions never coincide */
	uint8_t b[32];
	char hx[65];
	mbp_hex_encode(a1, 32, hx);
	CHECK(mbp_hex_decode(hx, b, 32) == 0 && memcmp(a1, b, 32) == 0);
	CHECK(mbp_hex_decode("zz", b, 1) == -EINVAL);

	/* the host-side helpers against a simulated agent */
	const char *tok = "secret-token-0123";
	uint8_t hn2[32], an2[32], proof[32];
	mbp_err err = { 0 };
	json_t *hello = mbp_hello_request(hn2, "test", &err);
	CHECK(hello && strcmp(mbp_get_str(hello, "op", ""), "hello") == 0);
	memset(an2, 7, 32);
	mbp_auth_agent_proof(tok, strlen(tok), hn2, an2, proof);
	char nhex[65], phex[65];
	mbp_hex_encode(an2, 32, nhex);
	mbp_hex_encode(proof, 32, phex);
	json_t *rep = json_pack("{s:b,s:i,s:s,s:s}", "ok", 1, "version", MBP_VERSION, "nonce", nhex,
	                        "proof", phex);
	json_t *auth = mbp_auth_request(rep, tok, strlen(tok), hn2, &err);
	CHECK(auth != NULL);
	uint8_t hp[32], got[32];
	mbp_auth_host_proof(tok, strlen(tok), hn2, an2, hp);
	CHECK(auth && mbp_hex_decode(mbp_get_str(auth, "proof", ""), got, 32) == 0 &&
	      memcmp(got, hp, 32) == 0);
	json_decref(auth);
	/* an agent with another token is detected */
	CHECK(mbp_auth_request(rep, "another-token-xyz", 17, hn2, &err) == NULL &&
	      err.code == -EACCES);
	json_decref(rep);
	json_decref(hello);
	CHECK(mbp_host_tsc_khz(NULL) > 0);
}

static void test_cpio(void)
{
	json_t *cfg = json_pack("{s:i,s:s}", "version", 1, "token", "0123456789abcdef");
	uint8_t *buf;
	size_t len;
	CHECK(mbp_cpio_boot_config(cfg, &buf, &len, NULL) == 0);
	CHECK(len % 512 == 0);
	CHECK(memcmp(buf, "070701", 6) == 0);
	/* the file entry: name, mode 0100600 */
	char *name = memmem(buf, len, "etc/moonbox/boot.json", 21);
	CHECK(name != NULL);
	if (name) {
		char *hdr = name - 110;
		CHECK(memcmp(hdr, "070701", 6) == 0);
		char mode[9] = { 0 };
		memcpy(mode, hdr + 14, 8);
		CHECK(strtoul(mode, NULL, 16) == (S_IFREG | 0600));
	}
	CHECK(memmem(buf, len, "\"token\":\"0123456789abcdef\"", 26) != NULL);
	CHECK(memmem(buf, len, "TRAILER!!!", 10) != NULL);
	free(buf);
	json_decref(cfg);
}

int main(void)
{
	test_sha();
	test_codec();
	test_auth();
	test_cpio();
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
