/*++
/* NAME
/*	client_init_fuzz 1
/* SUMMARY
/*	libFuzzer target for tls_proxy_client_init_scan()
/* SYNOPSIS
/*	client_init [libFuzzer options] [corpus directory or input file...]
/* DESCRIPTION
/*	This program feeds each input to tls_proxy_client_init_scan(),
/*	which reads TLS_CLIENT_INIT_PROPS, the TLS client engine
/*	settings that smtp(8) sends to tlsproxy(8) with every client
/*	request. The input is scanned as tlsproxy(8)
/*	(tlsp_get_request_event()) does: with attr_scan() (the
/*	null-terminated attr_scan0() encoding), ATTR_FLAG_STRICT, and
/*	RECV_ATTR_FUNC().
/*
/*	A successfully scanned structure must survive a round trip
/*	through tls_proxy_client_init_print() (see fuzz_common(3)).
/*	Whatever was scanned is destroyed with
/*	tls_proxy_client_init_free(), so that LeakSanitizer reports any
/*	memory that a failed scan leaks.
/* SEE ALSO
/*	fuzz_common(3), libFuzzer support
/*	tls_proxy(3), TLS proxy protocol support
/* LICENSE
/* .ad
/* .fi
/*	The Secure Mailer license must be distributed with this software.
/*--*/

/* System library. */

#include <sys_defs.h>

/* Utility library. */

#include <attr.h>
#include <vstream.h>

/* TLS library. */

#include <tls.h>
#include <tls_proxy.h>

/* Application-specific. */

#include "fuzz_common.h"

/* client_init_free - FUZZ_FREE_FN wrapper */

static void client_init_free(void *ptr)
{
    tls_proxy_client_init_free((TLS_CLIENT_INIT_PROPS *) ptr);
}

/* LLVMFuzzerTestOneInput - one input */

int     LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    TLS_CLIENT_INIT_PROPS *props = 0;
    VSTREAM *fp;
    int     ret;

    fuzz_init();
    fp = fuzz_open(data, size);
    ret = attr_scan(fp, ATTR_FLAG_STRICT,
		    RECV_ATTR_FUNC(tls_proxy_client_init_scan,
				   (void *) &props),
		    ATTR_TYPE_END);
    fuzz_close(fp);
    if (ret == 1 && props != 0)
	fuzz_round_trip("tls_proxy_client_init_scan", &fuzz_codec_zero,
			tls_proxy_client_init_print,
			tls_proxy_client_init_scan,
			client_init_free, (void *) props,
			FUZZ_RT_FLAG_NONE);
    if (props != 0)
	tls_proxy_client_init_free(props);
    return (0);
}
