/*++
/* NAME
/*	fuzz_common 3
/* SUMMARY
/*	support for libFuzzer targets of the tlsproxy(8) protocols
/* SYNOPSIS
/*	#include "fuzz_common.h"
/*
/*	const FUZZ_CODEC fuzz_codec_zero;
/*	const FUZZ_CODEC fuzz_codec_plain;
/*
/*	void	fuzz_init(void)
/*
/*	VSTREAM	*fuzz_open(data, size)
/*	const uint8_t *data;
/*	size_t	size;
/*
/*	void	fuzz_close(stream)
/*	VSTREAM	*stream;
/*
/*	void	fuzz_print(buf, codec, print_fn, ptr)
/*	VSTRING	*buf;
/*	const FUZZ_CODEC *codec;
/*	ATTR_PRINT_CUSTOM_FN print_fn;
/*	const void *ptr;
/*
/*	void	fuzz_round_trip(what, codec, print_fn, scan_fn, free_fn,
/*				ptr, flags)
/*	const char *what;
/*	const FUZZ_CODEC *codec;
/*	ATTR_PRINT_CUSTOM_FN print_fn;
/*	ATTR_SCAN_CUSTOM_FN scan_fn;
/*	FUZZ_FREE_FN free_fn;
/*	const void *ptr;
/*	int	flags;
/*
/*	int	fuzz_props(which, data, size)
/*	int	which;
/*	const uint8_t *data;
/*	size_t	size;
/* DESCRIPTION
/*	This module is shared by the libFuzzer targets that feed
/*	untrusted bytes to the deserializers of the tlsproxy(8)
/*	request and response protocols (tls_proxy_*_scan()).
/*
/*	fuzz_codec_zero describes the encoding that attr_scan() and
/*	attr_print() use on the tlsproxy(8) stream (attr_scan0(),
/*	null-terminated strings), scanned with ATTR_FLAG_STRICT as
/*	tlsproxy(8) and smtp(8) do. fuzz_codec_plain describes the
/*	encoding that smtp(8) uses for the TLS session state that it
/*	stores in scache(8) endpoint properties (attr_scan_plain(),
/*	"name=value" lines), scanned with ATTR_FLAG_NONE.
/*
/*	fuzz_init() performs one-time initialization. Postfix
/*	diagnostics are discarded, unless the FUZZ_VERBOSE environment
/*	variable is set, in which case they are written to the standard
/*	error stream. A msg_fatal() or msg_panic() call aborts the
/*	process, so that libFuzzer reports it as a crash with a stack
/*	trace: a deserializer must never reach either on bad input.
/*
/*	fuzz_open() returns a read-only memory stream with a copy of
/*	the specified input. fuzz_close() closes it.
/*
/*	fuzz_print() serializes the object \fIptr\fR with \fIprint_fn\fR
/*	in the specified encoding, as one complete attribute list, and
/*	stores the result in \fIbuf\fR.
/*
/*	fuzz_round_trip() checks that an object that \fIscan_fn\fR
/*	produced survives serialization: print, scan, print, scan,
/*	print must scan successfully each time, and the first and
/*	last serializations must be identical; without
/*	FUZZ_RT_FLAG_REORDERS, also the first and the second. It
/*	aborts the process with a message naming \fIwhat\fR otherwise.
/*	\fIfree_fn\fR destroys what \fIscan_fn\fR created.
/*
/*	fuzz_props() is the whole body of the targets for the request
/*	structures that tlsproxy(8) (tlsp_get_request_event()) reads
/*	with attr_scan(), ATTR_FLAG_STRICT and RECV_ATTR_FUNC(): it scans
/*	the input that way with the scanner of the structure named by
/*	\fIwhich\fR (FUZZ_PROPS_CLIENT_PARAM, FUZZ_PROPS_CLIENT_INIT,
/*	FUZZ_PROPS_CLIENT_START, FUZZ_PROPS_SERVER_INIT or
/*	FUZZ_PROPS_SERVER_START), checks a successful scan with
/*	fuzz_round_trip(), and destroys whatever was scanned, so that
/*	LeakSanitizer reports memory that a failed scan leaks. The
/*	result is 0, as libFuzzer wants.
/* LICENSE
/* .ad
/* .fi
/*	The Secure Mailer license must be distributed with this software.
/*--*/

/* System library. */

#include <sys_defs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>

/* Utility library. */

#include <msg.h>
#include <msg_output.h>
#include <msg_vstream.h>
#include <mymalloc.h>
#include <vstream.h>
#include <vstring.h>
#include <attr.h>

/* TLS library. */

#include <tls.h>
#include <tls_proxy.h>

/* Application-specific. */

#include "fuzz_common.h"

const FUZZ_CODEC fuzz_codec_zero = {
    "attr_scan0", attr_scan0, attr_print0, ATTR_FLAG_STRICT,
};

const FUZZ_CODEC fuzz_codec_plain = {
    "attr_scan_plain", attr_scan_plain, attr_print_plain, ATTR_FLAG_NONE,
};

/* fuzz_msg_trap - turn msg_fatal() and msg_panic() into a crash */

#ifdef HAS_MSG_OUTPUT_PUSH
static void fuzz_msg_trap(int level, const char *text, void *unused_context)
#else
static void fuzz_msg_trap(int level, const char *text)
#endif
{
    if (level >= MSG_FATAL) {
	fprintf(stderr, "fuzz: %s reached on fuzzer input: %s\n",
		level == MSG_PANIC ? "msg_panic" : "msg_fatal", text);
	abort();
    }
}

/* fuzz_init - one-time initialization */

void    fuzz_init(void)
{
    static int done;

    if (done)
	return;
    done = 1;
    if (getenv("FUZZ_VERBOSE") != 0)
	msg_vstream_init("fuzz", VSTREAM_ERR);
#ifdef HAS_MSG_OUTPUT_PUSH
    msg_output_push(fuzz_msg_trap, (void *) 0);	/* Postfix 3.12 and later */
#else
    msg_output(fuzz_msg_trap);
#endif
}

/* fuzz_open - input as a memory stream */

VSTREAM *fuzz_open(const uint8_t *data, size_t size)
{
    VSTRING *buf = vstring_alloc(size + 1);

    vstring_memcpy(buf, (const char *) data, size);
    return (vstream_memopen(buf, O_RDONLY));
}

/* fuzz_close - destroy memory stream and its buffer */

void    fuzz_close(VSTREAM *fp)
{
    VSTRING *buf = fp->vstring;

    if (vstream_fclose(fp) != 0)
	msg_panic("fuzz_close: memory stream close failed");
    vstring_free(buf);
}

/* fuzz_print - serialize one object as a complete attribute list */

void    fuzz_print(VSTRING *buf, const FUZZ_CODEC *codec,
		           ATTR_PRINT_CUSTOM_FN print_fn, const void *ptr)
{
    VSTREAM *fp;

    VSTRING_RESET(buf);
    fp = vstream_memopen(buf, O_WRONLY);
    if (codec->print(fp, ATTR_FLAG_NONE,
		     SEND_ATTR_FUNC(print_fn, ptr),
		     ATTR_TYPE_END) != 0)
	msg_panic("fuzz_print: %s serialization failed", codec->name);
    if (vstream_fclose(fp) != 0)
	msg_panic("fuzz_print: memory stream close failed");
}

/* fuzz_rescan - scan a serialization that we produced ourselves */

static void *fuzz_rescan(const char *what, const FUZZ_CODEC *codec,
			         ATTR_SCAN_CUSTOM_FN scan_fn,
			         FUZZ_FREE_FN free_fn, VSTRING *buf)
{
    VSTREAM *fp;
    void   *ptr = 0;
    int     ret;

    fp = fuzz_open((const uint8_t *) vstring_str(buf), VSTRING_LEN(buf));
    ret = codec->scan(fp, codec->scan_flags,
		      RECV_ATTR_FUNC(scan_fn, (void *) &ptr),
		      ATTR_TYPE_END);
    fuzz_close(fp);
    if (ret != 1 || ptr == 0) {
	if (ptr)
	    free_fn(ptr);
	msg_panic("%s: round trip: cannot scan what was printed (ret=%d)",
		  what, ret);
    }
    return (ptr);
}

/* fuzz_round_trip - scan(print(x)) must print as x does */

void    fuzz_round_trip(const char *what, const FUZZ_CODEC *codec,
			        ATTR_PRINT_CUSTOM_FN print_fn,
			        ATTR_SCAN_CUSTOM_FN scan_fn,
			        FUZZ_FREE_FN free_fn,
			        const void *ptr, int flags)
{
    static VSTRING *buf1;
    static VSTRING *buf2;
    static VSTRING *buf3;
    void   *copy;

    if (buf1 == 0) {
	buf1 = vstring_alloc(1000);
	buf2 = vstring_alloc(1000);
	buf3 = vstring_alloc(1000);
    }
    fuzz_print(buf1, codec, print_fn, ptr);
    copy = fuzz_rescan(what, codec, scan_fn, free_fn, buf1);
    fuzz_print(buf2, codec, print_fn, copy);
    free_fn(copy);
    copy = fuzz_rescan(what, codec, scan_fn, free_fn, buf2);
    fuzz_print(buf3, codec, print_fn, copy);
    free_fn(copy);

#define SAME(x, y) (VSTRING_LEN(x) == VSTRING_LEN(y) \
	&& memcmp(vstring_str(x), vstring_str(y), VSTRING_LEN(x)) == 0)

    if (!SAME(buf1, buf3)
	|| ((flags & FUZZ_RT_FLAG_REORDERS) == 0 && !SAME(buf1, buf2)))
	msg_panic("%s: round trip: %s serialization differs after scan",
		  what, codec->name);
}

 /*
  * FUZZ_FREE_FN wrappers for the typed destructors.
  */
static void client_param_free(void *ptr)
{
    tls_proxy_client_param_free((TLS_CLIENT_PARAMS *) ptr);
}

static void client_init_free(void *ptr)
{
    tls_proxy_client_init_free((TLS_CLIENT_INIT_PROPS *) ptr);
}

static void client_start_free(void *ptr)
{
    tls_proxy_client_start_free((TLS_CLIENT_START_PROPS *) ptr);
}

static void server_init_free(void *ptr)
{
    tls_proxy_server_init_free((TLS_SERVER_INIT_PROPS *) ptr);
}

static void server_start_free(void *ptr)
{
    tls_proxy_server_start_free((TLS_SERVER_START_PROPS *) ptr);
}

 /*
  * One row per request structure, indexed by FUZZ_PROPS_*. Each scan
  * reverses the TLSA record order of TLS_CLIENT_START_PROPS, because
  * tlsa_prepend() prepends: only its first and third serializations agree.
  */
typedef struct FUZZ_PROPS_INFO {
    const char *what;			/* scanner name, for diagnostics */
    ATTR_SCAN_CUSTOM_FN scan_fn;
    ATTR_PRINT_CUSTOM_FN print_fn;
    FUZZ_FREE_FN free_fn;
    int     rt_flags;			/* FUZZ_RT_FLAG_* */
} FUZZ_PROPS_INFO;

static const FUZZ_PROPS_INFO fuzz_props_info[] = {
    {"tls_proxy_client_param_scan", tls_proxy_client_param_scan,
	tls_proxy_client_param_print, client_param_free, FUZZ_RT_FLAG_NONE},
    {"tls_proxy_client_init_scan", tls_proxy_client_init_scan,
	tls_proxy_client_init_print, client_init_free, FUZZ_RT_FLAG_NONE},
    {"tls_proxy_client_start_scan", tls_proxy_client_start_scan,
	tls_proxy_client_start_print, client_start_free, FUZZ_RT_FLAG_REORDERS},
    {"tls_proxy_server_init_scan", tls_proxy_server_init_scan,
	tls_proxy_server_init_print, server_init_free, FUZZ_RT_FLAG_NONE},
    {"tls_proxy_server_start_scan", tls_proxy_server_start_scan,
	tls_proxy_server_start_print, server_start_free, FUZZ_RT_FLAG_NONE},
};

/* fuzz_props - one input for one request structure */

int     fuzz_props(int which, const uint8_t *data, size_t size)
{
    const FUZZ_PROPS_INFO *info;
    void   *props = 0;
    VSTREAM *fp;
    int     ret;

    if (which < 0 || which >= (int) (sizeof(fuzz_props_info)
				     / sizeof(fuzz_props_info[0])))
	msg_panic("fuzz_props: bad structure index %d", which);
    info = fuzz_props_info + which;
    fuzz_init();
    fp = fuzz_open(data, size);
    ret = attr_scan(fp, ATTR_FLAG_STRICT,
		    RECV_ATTR_FUNC(info->scan_fn, (void *) &props),
		    ATTR_TYPE_END);
    fuzz_close(fp);
    if (ret == 1 && props != 0)
	fuzz_round_trip(info->what, &fuzz_codec_zero, info->print_fn,
			info->scan_fn, info->free_fn, props, info->rt_flags);
    if (props != 0)
	info->free_fn(props);
    return (0);
}
