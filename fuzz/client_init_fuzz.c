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

/* Application-specific. */

#include "fuzz_common.h"

/* LLVMFuzzerTestOneInput - one input */

int     LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return (fuzz_props(FUZZ_PROPS_CLIENT_INIT, data, size));
}
