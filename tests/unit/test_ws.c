/* RFC 6455 codec: frame parsing, header building, UTF-8 and close-code rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ws.h"

static void accept_key_matches_rfc_example(void **state)
{
	char out[29];
	ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out);
	assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void parses_masked_text_frame(void **state)
{
	/* RFC 6455 5.7: a masked "Hello" */
	const uint8_t f[] = { 0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58 };
	struct ws_frame fr;
	assert_int_equal(ws_frame_parse(f, sizeof(f), true, &fr), (long)sizeof(f));
	assert_true(fr.fin);
	assert_int_equal(fr.opcode, WS_TEXT);
	assert_int_equal(fr.len, 5);
	char out[6] = { 0 };
	for (int i = 0; i < 5; i++)
		out[i] = (char)(f[fr.header_len + i] ^ fr.mask[i & 3]);
	assert_string_equal(out, "Hello");
}

static void incomplete_frames_need_more(void **state)
{
	const uint8_t f[] = { 0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58 };
	struct ws_frame fr;
	for (size_t n = 0; n < sizeof(f); n++)
		assert_int_equal(ws_frame_parse(f, n, true, &fr), 0);
}

static void unmasked_client_frame_is_protocol_error(void **state)
{
	const uint8_t f[] = { 0x81, 0x05, 'H', 'e', 'l', 'l', 'o' };
	struct ws_frame fr;
	assert_int_equal(ws_frame_parse(f, sizeof(f), true, &fr), -1002);
	assert_int_equal(ws_frame_parse(f, sizeof(f), false, &fr), (long)sizeof(f));
}

static void reserved_bits_and_opcodes_rejected(void **state)
{
	struct ws_frame fr;
	const uint8_t rsv[] = { 0xc1, 0x80, 0, 0, 0, 0 };
	assert_int_equal(ws_frame_parse(rsv, sizeof(rsv), true, &fr), -1002);
	const uint8_t op3[] = { 0x83, 0x80, 0, 0, 0, 0 };
	assert_int_equal(ws_frame_parse(op3, sizeof(op3), true, &fr), -1002);
	const uint8_t op11[] = { 0x8b, 0x80, 0, 0, 0, 0 };
	assert_int_equal(ws_frame_parse(op11, sizeof(op11), true, &fr), -1002);
}

static void control_frame_rules(void **state)
{
	struct ws_frame fr;
	const uint8_t fragmented_ping[] = { 0x09, 0x80, 0, 0, 0, 0 };
	assert_int_equal(ws_frame_parse(fragmented_ping, sizeof(fragmented_ping), true, &fr),
	                 -1002);
	uint8_t long_ping[4 + 4 + 126] = { 0x89, 0xfe, 0x00, 126 };
	assert_int_equal(ws_frame_parse(long_ping, sizeof(long_ping), true, &fr), -1002);
}

static void extended_lengths(void **state)
{
	static uint8_t f[10 + 4 + 70000];
	struct ws_frame fr;
	f[0] = 0x82;
	f[1] = 0x80 | 126;
	f[2] = 0x01;
	f[3] = 0x00; /* 256 */
	assert_int_equal(ws_frame_parse(f, 4 + 4 + 256, true, &fr), 4 + 4 + 256);
	assert_int_equal(fr.len, 256);
	f[2] = 0;
	f[3] = 100; /* 100 encoded in 16 bits: not minimal */
	assert_int_equal(ws_frame_parse(f, sizeof(f), true, &fr), -1002);
	memset(f, 0, 14);
	f[0] = 0x82;
	f[1] = 0x80 | 127;
	f[7] = 0x01;
	f[8] = 0x11;
	f[9] = 0x70; /* 70000 */
	assert_int_equal(ws_frame_parse(f, sizeof(f), true, &fr), (long)sizeof(f));
	assert_int_equal(fr.len, 70000);
	f[2] = 0x80; /* top bit set */
	assert_int_equal(ws_frame_parse(f, sizeof(f), true, &fr), -1002);
	f[2] = 0;
	f[6] = 0x10; /* 256 MiB: too big */
	assert_int_equal(ws_frame_parse(f, sizeof(f), true, &fr), -1009);
}

static void header_builder_roundtrip(void **state)
{
	uint64_t lens[] = { 0, 125, 126, 65535, 65536, 1u << 20 };
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		uint8_t h[10];
		size_t n = ws_frame_header(h, WS_BINARY, true, lens[i]);
		static uint8_t buf[10 + (1u << 20)];
		memcpy(buf, h, n);
		struct ws_frame fr;
		assert_int_equal(ws_frame_parse(buf, n + lens[i], false, &fr), (long)(n + lens[i]));
		assert_int_equal(fr.len, lens[i]);
		assert_int_equal(fr.opcode, WS_BINARY);
		assert_null(fr.mask);
	}
}

static void utf8_validation(void **state)
{
	assert_true(ws_utf8_valid("", 0));
	assert_true(ws_utf8_valid("plain", 5));
	assert_true(ws_utf8_valid("\xc3\xa9", 2));          /* é */
	assert_true(ws_utf8_valid("\xe2\x82\xac", 3));      /* € */
	assert_true(ws_utf8_valid("\xf0\x9f\x8c\x99", 4));  /* 🌙 */
	assert_false(ws_utf8_valid("\xc0\xaf", 2));         /* overlong */
	assert_false(ws_utf8_valid("\xe0\x80\xaf", 3));     /* overlong */
	assert_false(ws_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
	assert_false(ws_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
	assert_false(ws_utf8_valid("\xe2\x82", 2));         /* truncated */
	assert_false(ws_utf8_valid("\x80", 1));             /* lone continuation */
	assert_false(ws_utf8_valid("\xff", 1));
}

static void close_codes(void **state)
{
	assert_true(ws_close_code_valid(1000));
	assert_true(ws_close_code_valid(1011));
	assert_true(ws_close_code_valid(3000));
	assert_true(ws_close_code_valid(4999));
	assert_false(ws_close_code_valid(999));
	assert_false(ws_close_code_valid(1004));
	assert_false(ws_close_code_valid(1005));
	assert_false(ws_close_code_valid(1006));
	assert_false(ws_close_code_valid(1015));
	assert_false(ws_close_code_valid(5000));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(accept_key_matches_rfc_example),
		cmocka_unit_test(parses_masked_text_frame),
		cmocka_unit_test(incomplete_frames_need_more),
		cmocka_unit_test(unmasked_client_frame_is_protocol_error),
		cmocka_unit_test(reserved_bits_and_opcodes_rejected),
		cmocka_unit_test(control_frame_rules),
		cmocka_unit_test(extended_lengths),
		cmocka_unit_test(header_builder_roundtrip),
		cmocka_unit_test(utf8_validation),
		cmocka_unit_test(close_codes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
