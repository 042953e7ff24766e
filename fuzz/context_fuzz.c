/*++
/* NAME
/*	context_fuzz 1
/* SUMMARY
/*	libFuzzer target for tls_proxy_context_scan()
/* SYNOPSIS
/*	context [libFuzzer options] [corpus directory or input file...]
/* DESCRIPTION
/*	This program feeds each input to tls_proxy_context_receive_version(),
/*	the function with which smtp(8) reads the TLS context version
/*	and the TLS session state (TLS_SESS_STATE, including the server
/*	certificate in the "peer_cert_der" DATA attribute) that
/*	tlsproxy(8) returns after a handshake; an input that does not
/*	start with the version is skipped up to the end of its attribute
/*	list. Each input is also fed to tls_proxy_context_receive(),
/*	which reads the version 1 context that tlsproxy(8) sends to
/*	clients that ask for no version. Both call tls_proxy_context_scan()
/*	or tls_proxy_context_scan_v1() via attr_scan() (the null-terminated
/*	attr_scan0() encoding) with ATTR_FLAG_STRICT and RECV_ATTR_FUNC().
/*
/*	A successfully scanned structure must survive a round trip
/*	through the matching print function (see fuzz_common(3)). It
/*	is destroyed with tls_proxy_context_free(), so that
/*	LeakSanitizer reports any memory that a scan leaks.
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
#include <msg.h>
#include <vstream.h>

/* TLS library. */

#include <tls.h>
#include <tls_proxy.h>

/* Application-specific. */

#include "fuzz_common.h"

/* context_free - FUZZ_FREE_FN wrapper */

static void context_free(void *ptr)
{
    tls_proxy_context_free((TLS_SESS_STATE *) ptr);
}

/* LLVMFuzzerTestOneInput - one input */

int     LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    TLS_SESS_STATE *tls_context;
    VSTREAM *fp;
    int     version;

    fuzz_init();
    fp = fuzz_open(data, size);
    tls_context = tls_proxy_context_receive_version(fp, &version);
    fuzz_close(fp);
    if (tls_context != 0) {
	if (version != TLS_PROXY_CONTEXT_VERSION)
	    msg_panic("context of version %d accepted", version);
	fuzz_round_trip("tls_proxy_context_scan", &fuzz_codec_zero,
			tls_proxy_context_print, tls_proxy_context_scan,
			context_free, (void *) tls_context,
			FUZZ_RT_FLAG_NONE);
	tls_proxy_context_free(tls_context);
    }
    fp = fuzz_open(data, size);
    tls_context = tls_proxy_context_receive(fp);
    fuzz_close(fp);
    if (tls_context != 0) {
	fuzz_round_trip("tls_proxy_context_scan_v1", &fuzz_codec_zero,
			tls_proxy_context_print_v1, tls_proxy_context_scan_v1,
			context_free, (void *) tls_context,
			FUZZ_RT_FLAG_NONE);
	tls_proxy_context_free(tls_context);
    }
    return (0);
}
