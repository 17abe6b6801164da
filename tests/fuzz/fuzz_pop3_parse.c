/*
 * fuzz_pop3_parse: POP3 command lines (frontend/pop3) and the RETR/TOP
 * encoding. Checks: a parsed command's arguments lie inside the line; the
 * encoded message ends with ".\r\n", has only CRLF line ends, no line
 * starting with a single '.', and (without TOP) its unstuffed size is what
 * pop3_wire_size announces.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mp_buf.h"
#include "pop3_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *line = malloc(size + 1);
	CHECK(line != NULL);
	memcpy(line, data, size);
	line[size] = '\0';
	struct pop3_command c;
	const char *err = NULL;
	if (pop3_parse(line, size, &c, &err) == 0) {
		CHECK(c.nargs <= 2);
		for (size_t i = 0; i < c.nargs; i++)
			CHECK(c.arg[i] >= line && c.arg[i] <= line + size);
		uint32_t n;
		if (c.nargs > 0)
			(void)pop3_number(c.arg[0], true, &n);
	} else {
		CHECK(err != NULL);
	}
	free(line);

	int64_t top = size > 0 && data[0] < 8 ? data[0] : -1;
	struct mp_buf b;
	mp_buf_init(&b, 0);
	CHECK(pop3_stuff((const char *)data, size, top, &b) == 0);
	CHECK(b.len >= 3 && memcmp(b.data + b.len - 3, ".\r\n", 3) == 0);
	size_t dots = 0;
	for (size_t i = 0; i < b.len; i++) {
		if (b.data[i] == '\n')
			CHECK(i > 0 && b.data[i - 1] == '\r');
		bool bol = i == 0 || b.data[i - 1] == '\n';
		if (bol && b.data[i] == '.' && i + 3 != b.len) {
			CHECK(i + 1 < b.len && b.data[i + 1] == '.');
			dots++;
		}
	}
	if (top < 0)
		CHECK(pop3_wire_size((const char *)data, size) == b.len - 3 - dots);
	mp_buf_free(&b);
	return 0;
}
